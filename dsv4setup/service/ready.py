"""The unit's ExecStartPost: wait until the server's /health answers 200, so "started" means ready.

`python -m dsv4setup.service.ready --host H --port P --timeout S` exits 0 once /health is 200,
1 after S seconds without it (systemd then fails the start, stops the unit and, Restart=on-failure,
tries again within the start limit). It exits 1 at once when the server ($MAINPID, which systemd gives its
control processes) has exited: systemd waits for ExecStartPost even then, so a server that cannot start (a
bad flag) would otherwise hold `systemctl start` for the whole timeout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import psutil

from dsv4setup.serve.readiness import base_url, health_status

POLL_S = 1.0


def process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_healthy(host: str, port: int, timeout_s: float, poll_s: float = POLL_S,
                 alive: Callable[[], bool] = lambda: True) -> float | None:
    """Seconds until /health answered 200, or None after timeout_s or once `alive()` says the server is gone."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s and alive():
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
    main_pid = os.environ.get("MAINPID", "")

    def alive() -> bool:
        return not main_pid.isdigit() or process_alive(int(main_pid))

    took = wait_healthy(args.host, args.port, args.timeout, alive=alive)
    url = f"{base_url(args.host, args.port)}/health"
    if took is None and not alive():
        print(f"dsv4setup: the server (pid {main_pid}) exited before {url} answered 200", file=sys.stderr,
              flush=True)
        return 1
    if took is None:
        print(f"dsv4setup: {url} did not answer 200 within {args.timeout:.0f}s", file=sys.stderr, flush=True)
        return 1
    print(f"dsv4setup: ready, {url} answers 200 after {took:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
