"""The unit's ExecStartPost: wait until the server's /health answers 200, so "started" means ready.

`python -m dsv4setup.service.ready --host H --port P --timeout S` exits 0 once /health is 200,
1 after S seconds without it (systemd then fails the start, stops the unit and, Restart=on-failure,
tries again within the start limit).
"""

from __future__ import annotations

import argparse
import sys
import time

from dsv4setup.serve.readiness import base_url, health_status

POLL_S = 1.0


def wait_healthy(host: str, port: int, timeout_s: float, poll_s: float = POLL_S) -> float | None:
    """Seconds until /health answered 200, or None after timeout_s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if health_status(host, port) == 200:
            return time.monotonic() - started
        time.sleep(poll_s)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsv4setup.service.ready")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    took = wait_healthy(args.host, args.port, args.timeout)
    url = f"{base_url(args.host, args.port)}/health"
    if took is None:
        print(f"dsv4setup: {url} did not answer 200 within {args.timeout:.0f}s", file=sys.stderr, flush=True)
        return 1
    print(f"dsv4setup: ready, {url} answers 200 after {took:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
