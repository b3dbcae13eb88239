"""The key guard of a server bound beyond loopback: its vLLM flag, its PYTHONPATH, its file in the workdir.

A server that listens on another address than loopback runs with `--middleware
dsv4setup_keyguard.KeyGuard` (vLLM's own extension point), which puts every route but /health
behind the API key (keyguard.py says why vLLM's --api-key is not enough). The serving venv has
no dsv4setup, so the guard's source is copied into <workdir>/run/keyguard/ and that directory
goes first on the server's PYTHONPATH; nothing is written into the venv (uv hard-links its files
from its cache, so a write there would change other venvs too).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from pathlib import Path

from dsv4setup.core.fsutil import atomic_write_text
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.readiness import is_loopback

GUARD_MODULE = "dsv4setup_keyguard"
GUARD_MIDDLEWARE = f"{GUARD_MODULE}.KeyGuard"
SOURCE = "keyguard.py"
GUARD_DIR_NAME = "keyguard"


def guarded(host: str) -> bool:
    """Whether a server bound to host runs behind the key guard: every address but loopback."""
    return not is_loopback(host)


def guard_dir(workdir: Workdir) -> Path:
    return workdir.run_dir / GUARD_DIR_NAME


def is_guard_dir(path: str) -> bool:
    """Whether a PYTHONPATH entry is some workdir's guard directory (what the bench leaves out of its fingerprint)."""
    return Path(path).parts[-2:] == (Workdir(Path("/")).run_dir.name, GUARD_DIR_NAME)


def guard_file(workdir: Workdir) -> Path:
    return guard_dir(workdir) / f"{GUARD_MODULE}.py"


def guard_args() -> list[str]:
    return ["--middleware", GUARD_MIDDLEWARE]


def guard_env(workdir: Workdir, env: Mapping[str, str]) -> dict[str, str]:
    """PYTHONPATH with the guard's directory first (a PYTHONPATH the profile sets is kept after it)."""
    rest = env.get("PYTHONPATH")
    return {"PYTHONPATH": str(guard_dir(workdir)) + (f":{rest}" if rest else "")}


def guard_source() -> str:
    return importlib.resources.files("dsv4setup.serve").joinpath(SOURCE).read_text(encoding="utf-8")


def install_guard(workdir: Workdir) -> Path:
    """Write the guard module where the server's PYTHONPATH points (again whenever its text changed)."""
    path = guard_file(workdir)
    source = guard_source()
    try:
        current = path.read_text(encoding="utf-8")
    except OSError:
        current = None
    if current != source or path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, source, mode=0o644)
    return path
