"""One run at a time per workdir: an flock on `<workdir>/.lock` holding who took it."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from dsv4setup.core.errors import LockHeldError
from dsv4setup.core.fsutil import UNWRITABLE, unwritable


def read_holder(lock_file: Path) -> dict[str, object]:
    try:
        holder: dict[str, object] = json.loads(lock_file.read_text(encoding="utf-8") or "{}")
        return holder
    except (OSError, ValueError):
        return {}


@contextmanager
def workdir_lock(lock_file: Path, command: str) -> Iterator[None]:
    """Hold the workdir lock for the block; raise LockHeldError at once if someone else has it.

    The kernel drops an flock when its holder dies (SIGKILL included), so a stale lock
    never blocks a resume.
    """
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in UNWRITABLE:
            raise unwritable(lock_file, exc) from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(lock_file)
            raise LockHeldError(
                f"another dsv4setup run holds {lock_file} (pid {holder.get('pid', '?')}, "
                f"{holder.get('command', '?')}, since {holder.get('since', '?')})",
                fix="wait for it to finish, or stop it; the lock is released when that process exits",
            ) from None
        info = {"pid": os.getpid(), "since": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)


def current_holder(lock_file: Path) -> dict[str, object] | None:
    """Who holds the lock right now (None when free). Probes with a non-blocking flock."""
    if not lock_file.exists():
        return None
    fd = os.open(lock_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(lock_file) or {"pid": None}
    finally:
        os.close(fd)
    return None
