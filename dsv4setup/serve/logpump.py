"""The serve log pump: the server's output, line by line, into `logs/serve.log`, rotated by size.

vLLM writes to a pipe; this small process (`python -m dsv4setup.serve.logpump`, stdlib only, so
it starts in milliseconds and never delays the server) reads it and appends each line to the
log. When the next line would take the log past `max_bytes`, the log is renamed `serve.log.1`
(`.1` to `.2` ..., the oldest beyond `keep` dropped) and a new one begun, so a server that runs
for weeks keeps at most (keep + 1) * max_bytes of log. One reader, one writer, one line at a
time: the order of lines is the order vLLM wrote them (stdout and stderr share the pipe).
With --tee every line also goes to the pump's stdout (the journal, under systemd).

`line_filter` is the hook for stream filters: it gets each decoded line and returns the line to
write. Run as a program it redacts every secret it knows from its environment (the server's):
a secret never spans a line, so line-by-line redaction misses none.

The pump ignores SIGTERM/SIGINT/SIGHUP: it ends when the last writer of the pipe is gone,
after writing everything the server said last.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 3
LineFilter = Callable[[str], str]


def rotated_files(path: Path, keep: int = DEFAULT_KEEP) -> list[Path]:
    """The log and its rotated predecessors that exist, oldest first (serve.log.3, .2, .1, serve.log)."""
    older = [path.with_name(f"{path.name}.{i}") for i in range(keep, 0, -1)]
    return [p for p in [*older, path] if p.exists()]


def tail_across(path: Path, count: int) -> list[str]:
    """The last `count` lines of the log, reaching into the rotated files when the current one is short."""
    lines: list[str] = []
    for file in reversed(rotated_files(path)):
        with file.open(encoding="utf-8", errors="replace") as fh:
            lines = [line.rstrip("\n") for line in deque(fh, maxlen=count)][-(count - len(lines)):] + lines
        if len(lines) >= count:
            break
    return lines


class RotatingLog:
    """Appends lines to `path`; rotates before a line that would take it past `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("ab")
        self._size = self._fh.seek(0, os.SEEK_END)

    def _rotate(self) -> None:
        self._fh.close()
        for i in range(self.keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.keep > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fh = self.path.open("ab")
        self._size = 0

    def write(self, line: bytes) -> None:
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        self._fh.write(line)
        self._fh.flush()
        self._size += len(line)

    def close(self) -> None:
        self._fh.close()


def pump(source: BinaryIO, log: RotatingLog, tee: BinaryIO | None = None,
         line_filter: LineFilter | None = None) -> None:
    """Copy `source` to the log (and `tee`) line by line until end of file."""
    for raw in iter(source.readline, b""):
        line = raw if line_filter is None else line_filter(raw.decode("utf-8", errors="replace")).encode("utf-8")
        log.write(line)
        if tee is not None:
            with contextlib.suppress(OSError):  # the journal going away must not stop the log
                tee.write(line)
                tee.flush()


def pump_argv(log: Path, *, tee: bool = False) -> list[str]:
    """The command line of a pump process writing `log`."""
    return [sys.executable, "-m", "dsv4setup.serve.logpump", "--log", str(log), *(["--tee"] if tee else [])]


def main(argv: list[str] | None = None, line_filter: LineFilter | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsv4setup.serve.logpump",
                                     description="Copy stdin to a size-rotated log file, line by line.")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--max-bytes", type=int, default=int(os.environ.get("DSV4SETUP_SERVE_LOG_MAX_BYTES",
                                                                            DEFAULT_MAX_BYTES)))
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP)
    parser.add_argument("--tee", action="store_true", help="also copy every line to stdout")
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    log = RotatingLog(args.log, args.max_bytes, args.keep)
    try:
        pump(sys.stdin.buffer, log, sys.stdout.buffer if args.tee else None, line_filter)
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    from dsv4setup.core.secrets import known_secrets, redact

    secrets = known_secrets()  # from the server's environment: its own output may echo the API key
    sys.exit(main(line_filter=lambda line: redact(line, secrets)))
