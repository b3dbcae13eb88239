"""Damage to a finished cpu-tiny workdir, for real: a deleted model file is detected as drift and
re-fetched by the next `up`; a missing serving venv is detected as drift with the step that repairs
it; a read-only workdir stops `up` with a clear fix and changes nothing. (Runs after test_kill_up,
which leaves the workdir done; on its own, its first `up` does the whole runbook.)"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

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
