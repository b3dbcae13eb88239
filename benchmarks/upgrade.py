"""Seconds without a healthy /health during `dsv4setup upgrade`'s switch, against a plain stop and start of the
same server, in one run.

A thread asks the server's /health every 0.2 s while each command runs and adds up the time it did not
answer 200. The plain restart is `down` then `up` (serve and smoke run again). The switch is an `upgrade`
to the same vLLM version with other vllm inputs (a harmless extra constraint, so a second generation is
built beside the first while the server keeps serving), then `rollback` (a second switch sample). The
ratio of the switch's outage to the plain restart's is the figure: the build happens while the old server
serves, so the switch should cost one restart and no more. The result goes to benchmarks/results/upgrade.json
(and docs/performance.md).

    python benchmarks/upgrade.py [--workdir DIR]

Without --workdir a temporary workdir is made with `up --profile cpu-tiny` (minutes) and its server is
stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.cputiny import dsv, finished_workdir  # noqa: E402
from benchmarks.results import Figure, Ratio, start  # noqa: E402

POLL_S = 0.2
TARGET = 1.5
EXTRA = 'vllm.pip_constraints=["torch==2.13.0+cpu","torchvision==0.28.0","setuptools>=40"]'


class Outage(threading.Thread):
    """Adds up the seconds /health does not answer 200 while it runs."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url, self.down_s, self._done = f"http://127.0.0.1:{port}/health", 0.0, threading.Event()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def run(self) -> None:
        last = time.monotonic()
        while not self._done.is_set():
            ok = self.healthy()
            now = time.monotonic()
            if not ok:
                self.down_s += now - last
            last = now
            time.sleep(POLL_S)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return round(self.down_s, 1)


def outage(workdir: Path, port: int, *commands: list[str]) -> float:
    watch = Outage(port)
    watch.start()
    for args in commands:
        dsv(workdir, *args)
    return watch.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    run = start("upgrade")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dsv4setup-bench-upgrade-")) / "wd"
    print(f"finishing cpu-tiny in {workdir} ...", flush=True)
    finished_workdir(workdir)
    port = json.loads((workdir / "state.json").read_text())["steps"]["serve"]["outputs"]["port"]
    plain = outage(workdir, port, ["down"], ["up", "--yes"])
    print(f"plain down + up: {plain} s without a healthy /health", flush=True)
    version = json.loads((workdir / "state.json").read_text())["steps"]["vllm"]["outputs"]["version"]
    switch = outage(workdir, port, ["upgrade", "--vllm", version, "--set", EXTRA])
    print(f"upgrade (build beside, switch, smoke): {switch} s without a healthy /health", flush=True)
    back = outage(workdir, port, ["rollback"])
    print(f"rollback: {back} s without a healthy /health", flush=True)
    if args.workdir is None:
        dsv(workdir, "down")
    ratio = round(switch / plain, 2) if plain else 0.0
    run.finish("`upgrade`'s switch (and `rollback`) against `down` + `up` of the same cpu-tiny server: seconds "
               "without /health 200", [Figure("down + up", plain, "s"), Figure("upgrade", switch, "s"),
                                         Figure("rollback", back, "s")],
               [Ratio("upgrade / plain restart", ratio, target=f"within {TARGET}x", met=ratio <= TARGET)],
               note="the build of the new generation runs while the old server serves; cpu-tiny's vLLM start "
                    "dominates both")


if __name__ == "__main__":
    main()
