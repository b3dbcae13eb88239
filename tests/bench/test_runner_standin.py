"""The matrix runner against a stand-in server: a REAL subprocess from a real serving venv whose `vllm`
package is the stand-in (tests/bench/standin), started, watched and stopped by the serve step's own code.

What stands in is only vLLM (its server module and its `vllm bench serve` subcommand class); the probe,
the launcher, the runner, the serve and smoke steps, the known-failure matching, the rows, the report
and the restore are the real ones.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from dsv4setup.bench.execute import execute
from dsv4setup.bench.matrix import plan_matrix
from dsv4setup.bench.rows import read_rows
from dsv4setup.bench.runner import BenchSession
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.proc import StepLog
from dsv4setup.core.state import State, load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, RunContext, Selection
from dsv4setup.profiles.model import Profile
from dsv4setup.serve.manager import down
from dsv4setup.serve.process import ServerRecord, read_record
from dsv4setup.serve.signatures import known_failures
from dsv4setup.serve.step import ServeStep
from dsv4setup.smoke.step import SmokeStep
from tests.preflight.fake_nvml import load_fake

from .conftest import servers_of, standin_profile


class Recorder:
    """A display that records what the runner reports (and can interrupt it like Ctrl-C)."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.total: int | None = None
        self.rows: list[dict[str, Any]] = []
        self.texts: list[str] = []
        self.interrupt_after = interrupt_after

    def start(self, total: int) -> None:
        self.total = total

    def status(self, text: str) -> None:
        self.texts.append(text)

    def advance(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.interrupt_after is not None and len(self.rows) >= self.interrupt_after:
            raise KeyboardInterrupt


def session(workdir: Workdir, profile: Profile, log: StepLog, display: Recorder | None = None,
            state: State | None = None, **plan: str) -> BenchSession:
    return BenchSession(workdir=workdir, profile=profile, state=state or load_state(workdir.state_file), log=log,
                        plan=plan_matrix(profile, plan.get("ks"), None, plan.get("concurrency")),
                        display=display or Recorder(), nvml=load_fake("maxq-x2"))


def by_cell(rows: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    return {(r["k"], r["concurrency"]): r for r in rows}


def test_a_k_whose_server_crashes_is_recorded_with_its_known_failure_and_the_matrix_goes_on_with_a_stand_in_server(
        standin_workdir: Workdir) -> None:
    profile = standin_profile(k=1, env={"STANDIN_CRASH_K": "2"}, tp=2)
    display = Recorder()
    with StepLog(standin_workdir.log_file("bench")) as log:
        doc = execute(session(standin_workdir, profile, log, display))
    validate_document(doc)
    rows = read_rows(standin_workdir.bench_dir / "results.jsonl")  # every line validated against its schema
    assert rows == doc["rows"] and display.rows == rows and display.total == 3
    assert doc["order"] == [0, 2, 1]  # no server ran: the configured k last
    cells = by_cell(rows)
    crashed = cells[(2, 1)]
    assert crashed["status"] == "failed" and crashed["metrics"] is None
    assert crashed["error"]["known_failure"] == "deepgemm-next-n" and crashed["error"]["phase"] == "serve"
    assert crashed["error"]["fix"] == {f.id: f.finding.fix for f in known_failures()}["deepgemm-next-n"]
    assert crashed["error"]["excerpt"].startswith("Assertion error (") and "next_n == 1" in crashed["error"]["excerpt"]
    assert cells[(0, 1)]["status"] == "ok" and cells[(0, 1)]["metrics"]["acceptance_rate"] is None
    assert cells[(1, 1)]["status"] == "ok" and cells[(1, 1)]["metrics"]["acceptance_rate"] == 0.75
    assert cells[(1, 1)]["metrics"]["per_position_acceptance"] == [0.75]
    fp = cells[(1, 1)]["fingerprint"]
    assert fp["vllm"] == {"package": "vllm-standin", "version": "0.0.0", "commit": "0123abc", "install_route": None,
                          "bench_runner": "dsv4setup launcher of vllm bench serve"}
    maxq = "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition"
    assert [g["name"] for g in fp["hardware"]["gpus"]] == [maxq, maxq]
    assert fp["hardware"]["interconnect"] == "pcie" and fp["driver"]["version"]
    assert fp["workload"] == {"dataset": "random", "dataset_sha256": None, "input_len": 16, "output_len": 32,
                              "num_prompts": 4, "seed": 0, "temperature": 0.0, "ignore_eos": True}
    assert doc["best"]["short"]["k"] == 1 and doc["best"]["short"]["scores"]["2"] is None
    assert doc["counts"] == {"ok": 2, "failed": 1} and doc["ok"]
    assert doc["restore"]["server"] == "stopped" and read_record(standin_workdir) is None  # none ran before
    assert "next_n == 1 or next_n == 2" in standin_workdir.log_file("serve").read_text()
    report = (standin_workdir.bench_dir / "report.md").read_text()
    assert "known failure `deepgemm-next-n`" in report and "**Best k for `short`: 1**" in report
    assert (standin_workdir.bench_dir / "chart.png").read_bytes()[:4] == b"\x89PNG"
    raw = json.loads((standin_workdir.bench_dir / cells[(1, 1)]["raw_result"]).read_text())
    assert raw["output_throughput"] == cells[(1, 1)]["metrics"]["output_throughput"]


def test_a_server_that_dies_under_load_fails_its_cells_and_is_restored_and_smoke_tested_with_a_stand_in_server(
        standin_workdir: Workdir) -> None:
    profile = standin_profile(k=1, env={"STANDIN_DIE_K": "1"}, concurrency=[1, 2])
    up = Runbook([ServeStep(), SmokeStep()], standin_workdir, profile).up(Selection())
    assert up.ok, up.error
    first = read_record(standin_workdir)
    try:
        with StepLog(standin_workdir.log_file("bench")) as log:
            doc = execute(session(standin_workdir, profile, log, ks="0,1"))
        check_died_and_restored(standin_workdir, profile, first, doc)
    finally:
        down(standin_workdir)


def check_died_and_restored(standin_workdir: Workdir, profile: Profile, first: ServerRecord,
                            doc: dict[str, Any]) -> None:
    validate_document(doc)
    assert doc["order"] == [1, 0]  # the configured k ran already: measured first, on that very server
    assert doc["servers"][0] == {"k": 1, "ok": True, "pid": first.pid, "reused": True, "ready_s": 0.0}
    cells = by_cell(doc["rows"])
    died = cells[(1, 1)]
    assert died["status"] == "failed" and died["error"]["phase"] == "bench"
    assert died["error"]["known_failure"] == "out-of-memory"
    assert died["error"]["excerpt"] == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    skipped = cells[(1, 2)]
    assert skipped["status"] == "failed" and "died in an earlier cell" in skipped["error"]["message"]
    assert cells[(0, 1)]["status"] == "ok" and cells[(0, 2)]["status"] == "ok"
    assert doc["best"]["short"]["k"] == 0  # k=1 failed at a concurrency level: it cannot win
    restored = doc["restore"]
    assert restored["ok"] and restored["server"] == "running", restored
    assert restored["k"] == 1 and restored["smoke"] == "passed"
    record = read_record(standin_workdir)
    assert record.pid == restored["pid"] != first.pid and "--speculative-config" in record.argv
    ctx = RunContext(standin_workdir, profile, load_state(standin_workdir.state_file))
    assert ServeStep().is_done(ctx).ok and SmokeStep().is_done(ctx).ok  # `up` finds serve and smoke verified
    stopped = Runbook([ServeStep(), SmokeStep()], standin_workdir, profile).up(Selection())
    assert [d.action for d in stopped.decisions] == ["skip", "skip"]


def test_an_interrupted_bench_stops_a_server_at_another_k_and_keeps_its_rows_with_a_stand_in_server(
        standin_workdir: Workdir) -> None:
    profile = standin_profile(k=1)
    with StepLog(standin_workdir.log_file("bench")) as log, pytest.raises(KeyboardInterrupt):
        execute(session(standin_workdir, profile, log, Recorder(interrupt_after=1)))
    rows = read_rows(standin_workdir.bench_dir / "results.jsonl")
    assert [(r["k"], r["status"]) for r in rows] == [(0, "ok")]  # measured before the interrupt: kept
    assert read_record(standin_workdir) is None and servers_of(standin_workdir) == []  # k=0 is not configured
    assert "bench aborted: stopped the server" in standin_workdir.log_file("bench").read_text()


def test_the_bench_step_is_done_only_for_the_setup_it_measured_with_a_stand_in_server(
        standin_workdir: Workdir) -> None:
    from dsv4setup.bench.step import BenchStep

    profile = standin_profile(k=0)
    result = Runbook([BenchStep()], standin_workdir, profile, {"bench_k": "0,1"}).up(Selection())
    assert result.ok, result.error
    state = load_state(standin_workdir.state_file)
    outputs = state.steps["bench"].outputs
    rows = read_rows(standin_workdir.bench_dir / "results.jsonl")
    assert outputs["counts"] == {"ok": 2, "failed": 0}, [r["error"] for r in rows]
    assert outputs["best"] == {"short": 1}
    assert outputs["server"] == "stopped"
    ctx = RunContext(standin_workdir, profile, state, {"bench_k": "0,1"})
    done = BenchStep().is_done(ctx)
    assert done.ok and "2 cells" in done.summary
    wider = BenchStep().is_done(RunContext(standin_workdir, profile, state, {"bench_k": "0,1,2"}))
    assert not wider.ok and "k=2 short c=1" in wider.summary
    other = profile.model_copy(update={"serve": profile.serve.model_copy(update={"max_model_len": 128})})
    changed = BenchStep().is_done(RunContext(standin_workdir, other, state, {"bench_k": "0,1"}))
    assert not changed.ok and "not measured with this setup" in changed.summary
    again = Runbook([BenchStep()], standin_workdir, profile, {"bench_k": "0,1"}).up(Selection())
    assert again.ok and again.decisions[0].action == "skip"
