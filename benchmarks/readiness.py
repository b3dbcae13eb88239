"""Serve readiness: `dsv4setup up --only serve` against the same argv and env started by hand.

On a finished cpu-tiny workdir, alternately (each pair in the other order: the second start of a
pair finds the first one's files in the page cache): (a) `dsv4setup up --only serve --yes` until it
returns (the server answers /health and the step recorded it), then `down`; (b) the exact argv
and env of `dsv4setup plan --json` started by hand in its own session, polled on /health every
0.5 s (the serve step's own interval) until it answers 200, then stopped. Prints the medians
and dsv4setup's overhead (target <= 5 %); the result goes to benchmarks/results/readiness.json
(and docs/performance.md). vLLM's own startup varies by seconds between starts: quote only a run
on a quiet machine (the load average is recorded with it).

    python benchmarks/readiness.py [--workdir DIR] [--runs 3]

Without --workdir a temporary cpu-tiny workdir is made first (minutes). The server is left
stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.cputiny import dsv, finished_workdir  # noqa: E402
from benchmarks.results import Figure, Ratio, start  # noqa: E402

TARGET_PCT = 5.0
POLL_S = 0.5


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_port_free(host: str, port: int, timeout_s: float = 120) -> None:
    """A stopped server may hold its port a little longer on a loaded machine: start each run on a free port."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) != 0:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"port {port} on {host} is still in use after {timeout_s:.0f} s")
        time.sleep(1)


def address(argv: list[str]) -> tuple[str, int]:
    host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
    return host, int(argv[argv.index("--port") + 1])


def by_hand(workdir: Path, argv: list[str], env: dict[str, str], timeout_s: float = 1200) -> float:
    """Seconds from start to the first /health 200 of argv started by hand (then stopped)."""
    host, port = address(argv)
    url = f"http://{host}:{port}/health"
    wait_port_free(host, port)
    with (workdir / "logs" / "bench-by-hand.log").open("ab") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while not healthy(url):
                if proc.poll() is not None or time.perf_counter() - start > timeout_s:
                    raise SystemExit(f"the server started by hand did not become ready (see {log.name})")
                time.sleep(POLL_S)
            return time.perf_counter() - start
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dsv4setup-bench-ready-")) / "wd"
    print(f"finishing cpu-tiny in {workdir} ...", flush=True)
    finished_workdir(workdir)
    dsv(workdir, "down")
    plan = json.loads(dsv(workdir, "plan", "--json")[1].stdout)["serve"]
    times: dict[str, list[float]] = {"dsv4setup up --only serve": [], "same argv + env by hand": []}
    result = start("readiness")

    def run_ours() -> None:
        wait_port_free(*address(plan["argv"]))
        wall, _proc = dsv(workdir, "up", "--only", "serve", "--yes")
        times["dsv4setup up --only serve"].append(wall)
        dsv(workdir, "down")

    def run_by_hand() -> None:
        times["same argv + env by hand"].append(by_hand(workdir, plan["argv"], plan["env"]))

    for run in range(args.runs):
        # the second start of a pair finds the first one's files in the page cache: alternate who goes first
        for measure in (run_ours, run_by_hand) if run % 2 == 0 else (run_by_hand, run_ours):
            measure()
        print("  " + ", ".join(f"{k}: {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    ours, hand = (statistics.median(v) for v in times.values())
    overhead = (ours - hand) / hand * 100
    print(f"\nready after: dsv4setup {ours:.1f} s, by hand {hand:.1f} s (medians of {args.runs}): {ours / hand:.2f}x, "
          f"overhead {overhead:+.1f} % ({ours - hand:+.1f} s; target <= {TARGET_PCT:.0f} %: "
          f"{'met' if overhead <= TARGET_PCT else 'NOT met'})")
    result.finish(
        "`up --only serve` vs the same argv + env started by hand, polled on `/health`",
        [Figure("up", round(ours, 1), "s", [round(t, 1) for t in times["dsv4setup up --only serve"]]),
         Figure("by hand", round(hand, 1), "s", [round(t, 1) for t in times["same argv + env by hand"]])],
        [Ratio("up / by hand", round(ours / hand, 2)),
         Ratio("overhead", round(overhead, 1), "%", target=f"<= {TARGET_PCT:g} %", met=overhead <= TARGET_PCT)],
        note=f"Medians of {args.runs} pairs, each pair in the other order than the one before.")


if __name__ == "__main__":
    main()
