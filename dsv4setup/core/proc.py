"""Step logs and subprocesses whose output goes to them, secrets redacted."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import psutil

from dsv4setup.core.errors import StepError, UsageError
from dsv4setup.core.secrets import redact
from dsv4setup.core.state import now_iso
from dsv4setup.core.workdir import Workdir


class StepLog:
    """Append-only log of one step (`logs/<step>.log`), one section per attempt."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = path.open("a", encoding="utf-8")

    def write(self, text: str) -> None:
        self._fh.write(redact(text))
        self._fh.flush()

    def line(self, text: str) -> None:
        self.write(text.rstrip("\n") + "\n")

    def section(self, title: str) -> None:
        self.line(f"===== {now_iso()} {title}")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> StepLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


ATTEMPT_MARK = "attempt"  # the engine's section title per attempt: "===== TIME STEP: attempt N (pid P)"
_SECTION = "===== "


def attempt_tail(path: Path, count: int = 20) -> list[str]:
    """The last `count` lines of the log's last attempt only (never lines of an earlier attempt)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            lines: deque[str] = deque(maxlen=count)
            for raw in fh:
                line = raw.rstrip("\n")
                if line.startswith(_SECTION) and f": {ATTEMPT_MARK} " in line:
                    lines.clear()
                lines.append(line)
            return list(lines)
    except OSError:
        return []


def tail_lines(path: Path, count: int = 20) -> list[str]:
    """The last `count` lines of a log, secrets redacted (empty when there is none)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return [redact(line.rstrip("\n")) for line in deque(fh, maxlen=count)]
    except OSError:
        return []


def existing_step_log(workdir: Workdir, step: str) -> Path:
    """The log of `step`; UsageError unless it is one of the logs in the workdir (so no name leads elsewhere)."""
    known = sorted(p.stem for p in workdir.logs_dir.glob("*.log")) if workdir.logs_dir.is_dir() else []
    if step not in known:
        raise UsageError(f"no log for step {step!r} in {workdir.logs_dir}",
                         fix=f"steps with a log: {', '.join(known)}" if known else
                         "no step has run in this workdir yet: `dsv4setup status` lists the steps")
    return workdir.log_file(step)


def run_logged(
    argv: Sequence[str | os.PathLike[str]],
    log: StepLog,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    what: str | None = None,
    fix: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Run argv (no shell), stream stdout+stderr into the log; raise StepError on a non-zero exit.

    `env` entries are added to the current environment. The command line is logged, the
    environment is not (it may hold tokens).
    """
    args = [str(a) for a in argv]
    log.line(f"$ {' '.join(args)}")
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=full_env, cwd=cwd, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise StepError(f"{what or args[0]}: cannot start {args[0]}: {exc.strerror}", fix=fix) from None
    assert proc.stdout is not None
    record = _record_child(log, proc.pid)
    for line in proc.stdout:
        log.write(line)
        if on_line is not None:
            on_line(line.rstrip("\n"))
    code = proc.wait()
    record.unlink(missing_ok=True)
    log.line(f"[exit {code}]")
    if code != 0:
        raise StepError(f"{what or args[0]} failed with exit code {code} (see {log.path})", fix=fix)


def child_record(log_path: Path) -> Path:
    """Where run_logged keeps the pid of the child it is waiting on (beside the step's log)."""
    return log_path.with_name(f"{log_path.stem}.child.json")


def _record_child(log: StepLog, pid: int) -> Path:
    path = child_record(log.path)
    with contextlib.suppress(psutil.Error):
        path.write_text(json.dumps({"pid": pid, "create_time": psutil.Process(pid).create_time()}),
                        encoding="utf-8")
    return path


def stop_left_child(log_path: Path) -> list[int]:
    """Kill what a killed run left running under this step: the child run_logged recorded, by its pid and only
    while that pid is still the same process (its start time), with its descendants. A kill -9 of dsv4setup
    leaves its installer running, still writing into the folder the next run wants to rebuild."""
    path = child_record(log_path)
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        proc = psutil.Process(int(recorded["pid"]))
        same = abs(proc.create_time() - float(recorded["create_time"])) < 0.01
        victims = [*proc.children(recursive=True), proc] if same else []
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        victims = []
    for victim in victims:
        with contextlib.suppress(psutil.Error):
            victim.kill()
    psutil.wait_procs(victims, timeout=10)
    path.unlink(missing_ok=True)
    return [v.pid for v in victims]
