"""vLLM's output on its way to serve.log, with every known secret redacted.

A small process of its own between the server and its log (the server outlives `dsv4setup up`,
so its filter must too): it reads the server's stdout+stderr pipe and appends each piece,
redacted, to the log. Order is kept (one reader, one writer); nothing waits for a full line
longer than QUIET_S, so progress bars that rewrite a line with `\\r` still show and the
startup watchdog still sees output. A secret split across two reads is still caught: text is
written up to the last line break, and a partial line is written only up to where a secret
could begin. It ignores SIGTERM and
SIGINT, so the server's last words get through, and exits when the pipe closes (the server
and all its children are gone).

    python -m dsv4setup.serve.logfilter LOG    # stdin: the server's output
"""

from __future__ import annotations

import os
import select
import signal
import sys
from pathlib import Path

from dsv4setup.core.secrets import known_secrets, redact

QUIET_S = 0.5  # after this long without output, a partial line is written as it is
HOLD_MAX = 1 << 16  # a "line" longer than this is written without waiting for its end


def _redacted(data: bytes, secrets: list[str]) -> bytes:
    return redact(data.decode("utf-8", "surrogateescape"), secrets).encode("utf-8", "surrogateescape")


def _unsafe_tail(data: bytes, secrets: list[bytes]) -> int:
    """How many bytes at the end of `data` could be the start of a secret (to hold back)."""
    return max((k for secret in secrets for k in range(min(len(secret) - 1, len(data)), 0, -1)
                if data.endswith(secret[:k])), default=0)


def pump(source: int, log_path: Path) -> None:
    """Copy `source` (a pipe) to the end of `log_path`, redacted, until end of file."""
    secrets = known_secrets()
    raw_secrets = [secret.encode() for secret in secrets]
    pending = b""
    with log_path.open("ab", buffering=0) as log:
        while True:
            if select.select([source], [], [], QUIET_S)[0]:
                chunk = os.read(source, 1 << 16)
                if not chunk:
                    break
                pending += chunk
                cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
                if cut == 0 and len(pending) >= HOLD_MAX:
                    cut = len(pending)
            else:  # quiet: write the partial line, except what could be the start of a secret
                cut = len(pending) - _unsafe_tail(pending, raw_secrets)
            if cut:
                log.write(_redacted(pending[:cut], secrets))
                pending = pending[cut:]
        if pending:
            log.write(_redacted(pending, secrets))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pump(sys.stdin.fileno(), Path(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
