"""Step logs and subprocesses whose output goes to them, secrets redacted."""

from __future__ import annotations

import os
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

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
    for line in proc.stdout:
        log.write(line)
        if on_line is not None:
            on_line(line.rstrip("\n"))
    code = proc.wait()
    log.line(f"[exit {code}]")
    if code != 0:
        raise StepError(f"{what or args[0]} failed with exit code {code} (see {log.path})", fix=fix)
