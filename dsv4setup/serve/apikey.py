"""The API key of a server bound beyond loopback: the user's, or one generated and kept 0600.

The key reaches vLLM through VLLM_API_KEY in its environment (never argv), and every value is
registered with dsv4setup.core.secrets so that logs, state and JSON show *** instead. Off loopback
the key guard (serve/guard.py) enforces it on every route; the guard's module is put in place
together with the key, so every caller that prepares a server's key (the serve step, the systemd
unit) also has the module its command line names.
"""

from __future__ import annotations

import os
import secrets as pysecrets
from pathlib import Path

from dsv4setup.core.fsutil import write_secret_file
from dsv4setup.core.secrets import register_secret
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.guard import guarded, install_guard

USER_KEY_ENV = "DSV4SETUP_API_KEY"


def api_key_file(workdir: Workdir) -> Path:
    return workdir.secrets_dir / "api_key"


def _read_key(path: Path) -> str | None:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # a key readable by others is not a secret
    return key or None


def server_api_key(workdir: Workdir, host: str) -> str | None:
    """The key the server must require: the user's if set, else (off loopback only) the stored or a new one.

    Off loopback it also installs the key guard module the server's command line names."""
    if guarded(host):
        install_guard(workdir)
    key = os.environ.get(USER_KEY_ENV) or None
    if key is None and guarded(host):
        path = api_key_file(workdir)
        key = _read_key(path)
        if key is None:
            key = pysecrets.token_urlsafe(32)
            write_secret_file(path, key)
    register_secret(key)
    return key


def client_api_key(workdir: Workdir) -> str:
    """The key a client sends: the user's, the stored one, vLLM's own env, else vLLM's placeholder EMPTY."""
    key = os.environ.get(USER_KEY_ENV) or _read_key(api_key_file(workdir)) or os.environ.get("VLLM_API_KEY")
    register_secret(key)
    return key or "EMPTY"


def auth_summary(workdir: Workdir, host: str) -> dict[str, object]:
    """Whether a server on `host` requires the API key, and where the key is (for `plan`; the key itself never)."""
    user = bool(os.environ.get(USER_KEY_ENV))
    required = user or guarded(host)
    where = f"${USER_KEY_ENV}" if user else str(api_key_file(workdir).relative_to(workdir.root)) if required else None
    text = f"required (key in {where})" if required else "none (loopback only)"
    return {"required": required, "key": where, "text": text}
