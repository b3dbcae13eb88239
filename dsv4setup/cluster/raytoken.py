"""Ray's cluster token: made on the head, copied by the user to every worker, handed to Ray by path only.

Ray (>= 2.52) refuses every control-plane call (GCS, raylet, the client server on 10001) that does not
carry the cluster's token when it runs with RAY_AUTH_MODE=token. Each of our Ray processes and Ray
clients (every node's `ray start`, the server's driver, the cluster probe, status's live look, the
commands `plan` prints) gets both variables explicitly: with the mode unset Ray reads ~/.ray/auth_token
and turns auth on or off by what it finds there, and `ray.init(address=...)` never turns it on by itself.

The head writes `<workdir>/secrets/ray-auth-token` (0600, 256 random bits) when it has none. A worker
never generates one: it needs the head's, so its cluster step stops with `cluster-token-missing`, whose
fix is the exact command that copies the file over (the token itself never reaches argv, logs or JSON).

Not named token.py: ray_probe.py runs as a script from this directory, where a token.py would
shadow the standard library's `token` module.
"""

from __future__ import annotations

import os
import secrets
import shlex
import stat
import time
from pathlib import Path

from dsv4setup.core.fsutil import write_secret_file
from dsv4setup.core.secrets import register_secret
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.model import MultiNode, NodeSpec

TOKEN_FILE = "ray-auth-token"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
TOKEN_BYTES = 32  # Ray's own generator: secrets.token_hex(32)
REJECTED = "InvalidAuthToken"  # Ray 2.60's `ray start` when the GCS refuses its token (or it has none)
TAIL_BYTES = 64 * 1024


def token_file(workdir: Workdir) -> Path:
    return workdir.secrets_dir / TOKEN_FILE


def ray_auth_env(workdir: Workdir) -> dict[str, str]:
    """The environment every Ray process and client of ours gets: token mode, the token by path."""
    return {AUTH_MODE_ENV: "token", TOKEN_PATH_ENV: str(token_file(workdir))}


def token_problem(path: Path) -> str | None:
    """Why `path` is not a usable token file (None: it is): absent, not a plain file of ours, readable by
    others, empty. Ray itself treats an unreadable or empty file as fatal, with no fallback."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a plain file (a link or something else): copy the file itself"
    if info.st_uid != os.geteuid():
        return f"{path} belongs to uid {info.st_uid}, not to this user"
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        return f"{path} is readable by others (mode {mode:04o}): `chmod 600 {shlex.quote(str(path))}`"
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path} cannot be read: {exc}"
    if not token:
        return f"{path} is empty"
    register_secret(token)
    return None


def ensure_head_token(workdir: Workdir) -> bool:
    """The head's token, made when it has no usable one (True: made now). A file that exists but is not
    usable is an error the caller reports: it may be a copy the user meant to keep."""
    path = token_file(workdir)
    if path.exists() or path.is_symlink():
        return False
    write_secret_file(path, secrets.token_hex(TOKEN_BYTES))
    return True


def copy_command(head_address: str, head_path: Path, worker_path: Path) -> str:
    """The command a worker runs to get the head's token: over ssh, created 0600 by the umask, the token
    never on a command line (`scp` copies the file; its content goes through no argv or terminal)."""
    directory = shlex.quote(str(worker_path.parent))
    host = f"[{head_address}]" if ":" in head_address else head_address  # an IPv6 address
    source = shlex.quote(f"{host}:{head_path}")
    return f"(umask 077 && mkdir -p {directory} && scp {source} {shlex.quote(str(worker_path))})"


def token_fix(multi: MultiNode, workdir: Workdir, node: NodeSpec) -> str:
    """What a worker does to get the head's token (the head's workdir taken to be at the same path)."""
    path = token_file(workdir)
    return (f"copy the head's token file here (run on {node.name}; the head's workdir is taken to be at the same "
            f"path, adjust if not): {copy_command(str(multi.head.address), path, path)}; then run "
            f"`dsv4setup up --node {node.name}` again. The token is made by the head's "
            f"`dsv4setup up --node {multi.head.name}` and must be the same file on every node")


def token_rejected(log: Path, since: int = 0, wait_s: float = 0.0) -> bool:
    """Did Ray write, in the step log after offset `since`, that the head refused this node's token?
    `wait_s`: how long to look again (Ray's last lines reach the log through the log pump, a moment
    after Ray exits)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with log.open("rb") as fh:
                fh.seek(max(since, log.stat().st_size - TAIL_BYTES))
                if REJECTED in fh.read().decode("utf-8", errors="replace"):
                    return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def token_note(multi: MultiNode, workdir: Workdir) -> str:
    """The plan's note on the token (every per-node command carries RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH)."""
    path = token_file(workdir)
    return (f"Ray runs with token authentication: every command here reads the token from {path}. The head's "
            f"`dsv4setup up --node {multi.head.name}` makes it (0600); on every worker copy it before joining: "
            f"{copy_command(str(multi.head.address), path, path)}")
