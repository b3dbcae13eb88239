"""Detached runs: `up --detach` starts the run in its own session and returns; `wait` follows it.

The detached run is an ordinary `dsv4setup up --json` in a new session (setsid), stdin from
/dev/null, its progress lines in `logs/up.log` and its final JSON document in
`run/up-result.json`. It writes the same state and step logs as a run in the foreground, so it
survives the shell (or agent) that started it being killed. The workdir lock is taken before
anything is touched and handed to the run (core.lock), which keeps it until it exits: of two
`up --detach` at once, the second is refused (exit 3) with nothing of the first's overwritten.
`run/up-detached.json` records its pid and start time: `wait` tells a live run from a dead one
by both (a reused pid is not ours).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from dsv4setup.core.errors import EXIT_WAIT_DONE, EXIT_WAIT_FAILED, EXIT_WAIT_RUNNING, LockHeldError, UsageError
from dsv4setup.core.fsutil import atomic_write_json
from dsv4setup.core.lock import LOCK_FD_ENV, current_holder, record_holder, take_lock
from dsv4setup.core.state import now_iso
from dsv4setup.core.workdir import Workdir

DETACH_SCHEMA = "dsv4setup.detach/1"
WAIT_SCHEMA = "dsv4setup.wait/5"  # /2: embeds status/3; /3: status/4; /4: status/5, default timeout 100 s; /5: status/6
Outcome = Literal["done", "failed", "running"]
WAIT_TIMEOUT_S = 100  # below the 120 s many agent shells allow one call
EXIT_OF: dict[Outcome, int] = {"done": EXIT_WAIT_DONE, "failed": EXIT_WAIT_FAILED, "running": EXIT_WAIT_RUNNING}


@dataclass(frozen=True)
class DetachedRun:
    pid: int
    create_time: float
    started_at: str
    argv: list[str]
    log: str
    result: str

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self.create_time and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def record_file(workdir: Workdir) -> Path:
    return workdir.run_dir / "up-detached.json"


def result_file(workdir: Workdir) -> Path:
    return workdir.run_dir / "up-result.json"


def wait_command(workdir: Workdir) -> list[str]:
    return ["dsv4setup", "wait", "--workdir", str(workdir.root), "--timeout", str(WAIT_TIMEOUT_S), "--json"]


def start_detached(workdir: Workdir, up_args: list[str], command: str = "up") -> DetachedRun:
    """Start `dsv4setup COMMAND UP_ARGS --json` (`up`, `upgrade`, `rollback`) in its own session, holding the
    workdir lock from before anything is touched until the run exits; refuse at once (exit 3) when another run
    holds it."""
    try:
        lock = take_lock(workdir.lock_file, f"{command} --detach")
    except LockHeldError as exc:
        raise LockHeldError(exc.message, fix="follow it with `dsv4setup wait`", command=wait_command(workdir)) from None
    try:
        workdir.ensure()
        argv = [sys.executable, "-m", "dsv4setup", command, *up_args, "--workdir", str(workdir.root), "--json"]
        log, result = workdir.log_file("up"), result_file(workdir)
        result.unlink(missing_ok=True)
        with log.open("ab") as log_fh, result.open("wb") as result_fh:
            log_fh.write(f"===== {now_iso()} detached: {' '.join(argv[1:])}\n".encode())
            log_fh.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=result_fh, stderr=log_fh,
                                    start_new_session=True, close_fds=True, pass_fds=(lock,), cwd=workdir.root,
                                    env={**os.environ, LOCK_FD_ENV: str(lock)})
        record_holder(lock, f"{command} --detach", proc.pid)  # the run holds it now, whatever happens to this process
        run = DetachedRun(proc.pid, psutil.Process(proc.pid).create_time(), now_iso(), argv[1:], str(log),
                          str(result))
        atomic_write_json(record_file(workdir), asdict(run))
    finally:
        os.close(lock)
    return run


def read_detached(workdir: Workdir) -> DetachedRun | None:
    try:
        return DetachedRun(**json.loads(record_file(workdir).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _result(run: DetachedRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    try:
        doc = json.loads(Path(run.result).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def running(workdir: Workdir, run: DetachedRun | None) -> bool:
    """A run is active: the detached one is alive, or anything holds the workdir lock."""
    return (run is not None and run.alive()) or current_holder(workdir.lock_file) is not None


def wait_for_run(workdir: Workdir, timeout_s: float, status: Callable[[], dict[str, Any]],
                 poll_s: float = 1.0) -> dict[str, Any]:
    """Block up to timeout_s for the run to end; the wait document (outcome done / failed / running)."""
    run = read_detached(workdir)
    if run is None and current_holder(workdir.lock_file) is None and not workdir.state_file.exists():
        raise UsageError(f"nothing to wait for in {workdir.root}: no run was started there",
                         fix="start one with `dsv4setup up --detach --yes`")
    started = time.monotonic()
    while running(workdir, run) and time.monotonic() - started < timeout_s:
        time.sleep(poll_s)
    doc = status()
    result = _result(run)
    outcome = _outcome(running(workdir, run), result, doc)
    return {"schema": WAIT_SCHEMA, "outcome": outcome, "exit_code": EXIT_OF[outcome],
            "waited_s": round(time.monotonic() - started, 1), "pid": run.pid if run else None,
            "log": run.log if run else None, "result": result, "status": doc,
            "follow": wait_command(workdir) if outcome == "running" else None}


def _outcome(active: bool, result: dict[str, Any] | None, status: dict[str, Any]) -> Outcome:
    if active:
        return "running"
    if result is not None and "ok" in result:
        return "done" if result["ok"] else "failed"
    rows = status["steps"]  # killed before it wrote its result, or a foreground run: judge by the state
    return "done" if rows and all(r["status"] in ("done", "skipped") for r in rows
                                  if r["step"] != "bench") else "failed"


def describe(run: DetachedRun) -> dict[str, Any]:
    workdir = Workdir(Path(run.log).parent.parent)
    return {"schema": DETACH_SCHEMA, "ok": True, "pid": run.pid, "log": run.log, "result": run.result,
            "started_at": run.started_at, "argv": run.argv, "follow": wait_command(workdir),
            "tail": ["dsv4setup", "logs", "up", "--workdir", str(workdir.root), "-f"]}

