"""A kill -9 of dsv4setup leaves the child it waited on running; the next run stops it by its recorded pid only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from dsv4setup.core.proc import child_record, stop_left_child

PARENT = """
import sys
from pathlib import Path
from dsv4setup.core.proc import StepLog, run_logged
run_logged([sys.executable, "-c", "import time; print('child up', flush=True); time.sleep(300)"],
           StepLog(Path(sys.argv[1])))
"""


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_child_a_killed_run_left_is_stopped_by_its_recorded_pid(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "vllm.log"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(log)])
    record = child_record(log)
    _wait_for(lambda: record.exists() and log.exists() and "child up" in log.read_text(), "the child never started")
    child = int(json.loads(record.read_text())["pid"])
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert psutil.pid_exists(child), "the child should outlive its killed parent (what this guards against)"

    assert stop_left_child(log) == [child]
    _wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
              "the left child is still running")
    assert not record.exists()


def test_a_record_whose_pid_is_now_another_process_stops_nothing(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        child_record(log).write_text(json.dumps({"pid": other.pid, "create_time": 1.0}))  # another start time
        assert stop_left_child(log) == []
        assert other.poll() is None, "a process we cannot prove ours was killed"
    finally:
        other.kill()
        other.wait()


def test_no_record_and_a_damaged_one_stop_nothing(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    assert stop_left_child(log) == []
    child_record(log).write_text("{not json")
    assert stop_left_child(log) == []
    assert not child_record(log).exists()


def test_a_finished_child_leaves_no_record(tmp_path: Path) -> None:
    from dsv4setup.core.proc import StepLog, run_logged

    log = tmp_path / "logs" / "toolkit.log"
    with StepLog(log) as step_log:
        run_logged([sys.executable, "-c", "print('done')"], step_log)
    assert not child_record(log).exists()
