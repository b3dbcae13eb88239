"""This node's Ray: started detached by the cluster step, recorded in `run/ray.json`, stopped by pid.

Ray runs as `python -m ray.scripts.scripts start --block ...` from the serving venv, so the recorded
pid stays alive as long as this node's Ray does; every Ray process it starts (GCS, raylet, workers)
inherits the record's id in its environment, which is how `down` finds them, and only them:
never `ray stop`, which kills every Ray process on the host.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4setup.core.proc import StepLog
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.process import RAY_RECORD, ServerRecord, StopReport, leader_process, read_record, stop_server

RAY_MODULE = "ray.scripts.scripts"
PROBE_SCRIPT = Path(__file__).with_name("ray_probe.py")


def ray_record(workdir: Workdir) -> ServerRecord | None:
    return read_record(workdir, RAY_RECORD)


def ray_alive(record: ServerRecord) -> bool:
    """Is the recorded `ray start --block` still running, with the recorded command line?"""
    proc = leader_process(record)
    try:
        return proc is not None and proc.cmdline() == record.argv
    except OSError:
        return False


def stop_ray(workdir: Workdir, grace_s: float = 15.0) -> StopReport | None:
    """Stop this node's Ray (only the processes we started), None when none is recorded."""
    record = ray_record(workdir)
    return None if record is None else stop_server(workdir, record, grace_s, name=RAY_RECORD)


@dataclass(frozen=True)
class ProbeLine:
    alive: dict[str, dict[str, float]] | None = None
    fingerprints: dict[str, dict[str, Any]] | None = None


def alive_now(python: Path, address: str, env: dict[str, str], timeout_s: float = 60.0) -> dict[str, Any] | None:
    """The nodes alive in the Ray cluster at `address` now (node address -> resources); None: no answer."""
    try:
        result = subprocess.run([str(python), str(PROBE_SCRIPT), address, "--once"], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout_s, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for text in reversed(result.stdout.splitlines()):
        try:
            doc = json.loads(text)
        except ValueError:
            continue  # Ray's own chatter on stdout
        alive = doc.get("alive") if isinstance(doc, dict) else None
        if isinstance(alive, dict):
            return alive
    return None


@contextmanager
def probe(python: Path, address: str, nodes: list[str], fingerprints: bool, env: dict[str, str],
          log: StepLog) -> Iterator[Callable[[float], ProbeLine | None]]:
    """Run ray_probe.py in the serving venv; yield `next_line(timeout_s)` (None: nothing in time).

    The probe's stderr goes to the step log; it is killed when the block ends."""
    argv = [str(python), str(PROBE_SCRIPT), address, *nodes, *(["--fingerprints"] if fingerprints else [])]
    with log.path.open("ab") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", errors="replace"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    finished = False

    def next_line(timeout_s: float) -> ProbeLine | None:
        nonlocal finished
        deadline = time.monotonic() + timeout_s
        while not finished and time.monotonic() < deadline:
            try:
                text = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if text is None:
                finished = True
                return None
            try:
                doc = json.loads(text)
            except ValueError:
                continue  # Ray's own chatter on stdout
            if isinstance(doc, dict):
                return ProbeLine(doc.get("alive"), doc.get("fingerprints"))
        return None

    try:
        yield next_line
    finally:
        proc.kill()
        proc.wait()
