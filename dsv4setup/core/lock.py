"""One run at a time per workdir: an flock on `<workdir>/.lock` holding who took it.

A lock can be handed to a child process: `up --detach` takes it before it starts the detached run,
which inherits the open lock file (the same open file description, so the same flock) and names it
in DSV4SETUP_LOCK_FD. The child's `workdir_lock` uses that file instead of opening its own, so the lock
is held without a gap from the parent's check to the child's exit, and a second `up --detach` is refused
before it touches anything. An fd that is not this lock file is ignored; the flock is taken on it as on
any other, so naming an fd never lets a run past a lock another process holds.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
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


LOCK_FD_ENV = "DSV4SETUP_LOCK_FD"
_handed: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) of a lock file -> the fd handed to this process


def take_lock(lock_file: Path, command: str, pid: int | None = None) -> int:
    """Take the workdir lock at once (LockHeldError when someone else has it) and record its holder
    (`pid`, default this process); returns the open lock file, which holds the lock until closed.

    The kernel drops an flock when its holder dies (SIGKILL included), so a stale lock
    never blocks a resume.
    """
    fd = _handed_over(lock_file)
    if fd is None:
        try:
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in UNWRITABLE:
                raise unwritable(lock_file, exc) from None
            raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not _is_handed(fd):
            os.close(fd)
        holder = _holder_once_written(lock_file)
        raise LockHeldError(
            f"another dsv4setup run holds {lock_file} (pid {holder.get('pid', '?')}, "
            f"{holder.get('command', '?')}, since {holder.get('since', '?')})",
            fix="wait for it to finish, or stop it; the lock is released when that process exits",
        ) from None
    record_holder(fd, command, pid)
    return fd


def _holder_once_written(lock_file: Path, tries: int = 20) -> dict[str, object]:
    """Who holds the lock: a holder writes itself in just after it takes the lock, so a run refused in that
    instant reads it a moment later rather than naming no one."""
    holder = read_holder(lock_file)
    for _ in range(tries):
        if "pid" in holder:
            break
        time.sleep(0.05)
        holder = read_holder(lock_file)
    return holder


def record_holder(fd: int, command: str, pid: int | None = None) -> None:
    """Write who holds the lock into the lock file (read by read_holder for the refusal message)."""
    info = {"pid": pid or os.getpid(), "since": datetime.now(UTC).isoformat(timespec="seconds"), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


@contextmanager
def workdir_lock(lock_file: Path, command: str) -> Iterator[None]:
    """Hold the workdir lock for the block; raise LockHeldError at once if someone else has it.
    A lock handed to this process (see the module's doc) is kept until the process exits."""
    fd = take_lock(lock_file, command)
    try:
        yield
    finally:
        if not _is_handed(fd):
            os.close(fd)


def _is_handed(fd: int) -> bool:
    return fd in _handed.values()


def _handed_over(lock_file: Path) -> int | None:
    """The open lock file a parent handed to this process (LOCK_FD_ENV), when it is `lock_file`."""
    named = os.environ.pop(LOCK_FD_ENV, None)  # not passed on to what this process starts
    if named is not None and named.isdigit():
        try:
            info = os.fstat(int(named))
            writable = fcntl.fcntl(int(named), fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
            if stat.S_ISREG(info.st_mode) and writable:
                os.set_inheritable(int(named), False)  # what this process starts never holds the lock
                _handed.setdefault((info.st_dev, info.st_ino), int(named))
        except OSError:
            pass
    try:
        here = os.stat(lock_file)
    except OSError:
        return None
    return _handed.get((here.st_dev, here.st_ino))


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


@contextmanager
def held_across(lock_file: Path, command: str) -> Iterator[None]:
    """Hold the workdir lock over several runs in this process (`upgrade`: build, switch, rollback): each
    `workdir_lock` taken inside reuses it, so no other run gets in between them."""
    fd = take_lock(lock_file, command)
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    mine = key not in _handed
    _handed.setdefault(key, fd)
    try:
        yield
    finally:
        if mine:
            _handed.pop(key, None)
            os.close(fd)
