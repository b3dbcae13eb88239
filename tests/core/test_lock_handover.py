"""The workdir lock handed to a child (`up --detach`): kept by the child, never a way past another's lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4setup.core.errors import LockHeldError
from dsv4setup.core.lock import LOCK_FD_ENV, current_holder, take_lock, workdir_lock

CHILD = """
import os, subprocess, sys
from pathlib import Path
from dsv4setup.core.errors import LockHeldError
from dsv4setup.core.lock import LOCK_FD_ENV, workdir_lock
lock = Path(sys.argv[1])
LIST_FDS = "import os; print(sorted(os.path.realpath('/proc/self/fd/' + f) for f in os.listdir('/proc/self/fd')))"
try:
    with workdir_lock(lock, "up"):
        leaked = os.environ.get(LOCK_FD_ENV)
        fds = subprocess.run([sys.executable, "-c", LIST_FDS], close_fds=False, capture_output=True, text=True).stdout
    with workdir_lock(lock, "up"):  # a second block of the same run: still its lock
        pass
    print("held", leaked, str(lock) in fds)
except LockHeldError as exc:
    print("refused", exc.message)
"""


def run_child(lock: Path, fd: int | None) -> str:
    env = {**os.environ, **({LOCK_FD_ENV: str(fd)} if fd is not None else {})}
    return subprocess.run([sys.executable, "-c", CHILD, str(lock)], env=env, pass_fds=(fd,) if fd else (),
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def test_a_handed_lock_is_the_childs_and_is_not_passed_on(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    fd = take_lock(lock, "up --detach")
    try:
        # the handed lock, twice; neither the variable nor the open lock file reaches what the child starts
        assert run_child(lock, fd) == "held None False"
        assert run_child(lock, None).startswith("refused another dsv4setup run holds")  # no hand-over: refused
    finally:
        os.close(fd)
    assert current_holder(lock) is None


def test_naming_another_file_or_an_unlocked_open_of_the_lock_gets_no_one_past_a_held_lock(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)
    with workdir_lock(lock, "up"):
        same_file = os.open(lock, os.O_RDWR)  # the lock file, but not the open file that holds the lock
        try:
            for fd in (other, same_file):
                assert run_child(lock, fd).startswith("refused another dsv4setup run holds"), fd
        finally:
            os.close(same_file)
            os.close(other)
    with pytest.raises(LockHeldError), workdir_lock(lock, "a"), workdir_lock(lock, "b"):
        pass  # nested in one process without a hand-over: refused as before
