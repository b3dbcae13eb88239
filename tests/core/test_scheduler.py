"""The concurrent engine with small real steps (tests/core/steps_for_tests.py's `branch_steps`: root, then
build -> patch beside fetch, lint after fetch and build, join after all). Concurrency is proven by a
rendezvous, never by timing: steps in TEST_STEPS_MEET only get past their start when the others run too."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime
from pathlib import Path

import pytest

from dsv4setup.core.errors import UsageError
from dsv4setup.core.state import State, StepRecord, StepStatus, load_state, save_state
from dsv4setup.core.status import status_doc
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection
from dsv4setup.profiles.model import Profile
from tests.core import steps_for_tests as ts

pytestmark = pytest.mark.usefixtures("steps_dir")


def make(workdir: Workdir, profile: Profile) -> Runbook:
    return Runbook(ts.branch_steps(), workdir, profile)


def rows(workdir: Workdir, runbook: Runbook) -> dict[str, str]:
    doc = status_doc(load_state(workdir.state_file), runbook.names, runbook.needs)
    return {r["step"]: r["status"] for r in doc["steps"]}


def overlap(a: StepRecord, b: StepRecord) -> bool:
    assert a.started_at and a.finished_at and b.started_at and b.finished_at
    return max(a.started_at, b.started_at) <= min(a.finished_at, b.finished_at)


def test_both_branches_run_at_once_and_every_step_once(workdir: Workdir, profile: Profile,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_STEPS_MEET", "build,fetch")
    rb = make(workdir, profile)
    result = rb.up(Selection())
    assert result.ok, result.error
    assert sorted(ts.journal()) == sorted(ts.BRANCHES) and ts.journal()[0] == "root"
    assert ts.journal()[-1] == "join"
    assert [d.step for d in result.decisions] == list(ts.BRANCHES)  # reported in runbook order
    state = load_state(workdir.state_file)
    assert all(state.steps[n].status == StepStatus.DONE and state.steps[n].attempts == 1 for n in ts.BRANCHES)
    build, fetch, lint = (state.steps[n] for n in ("build", "fetch", "lint"))
    assert overlap(build, fetch)
    assert lint.started_at and build.finished_at and fetch.finished_at
    assert lint.started_at >= max(build.finished_at, fetch.finished_at)  # it needs both
    again = rb.up(Selection())
    assert again.ok and [d.action for d in again.decisions] == ["skip"] * len(ts.BRANCHES)


def test_sequential_runs_one_step_at_a_time_in_order(workdir: Workdir, profile: Profile,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rb = make(workdir, profile)
    assert rb.up(Selection(), sequential=True).ok
    assert ts.journal() == list(ts.BRANCHES)
    monkeypatch.setenv("TEST_STEPS_MEET", "build,fetch")  # one at a time: build waits for fetch in vain
    monkeypatch.setenv("TEST_STEPS_WAIT_S", "0.5")
    result = rb.up(Selection(redo=("build", "fetch")), sequential=True)
    assert not result.ok and result.failed_step == "build"
    assert result.error is not None and "fetch never ran beside it" in result.error.message
    assert ts.journal() == [*ts.BRANCHES, "build"]  # fetch, after it in order, never started


@pytest.mark.parametrize(("failing", "other"), [("build", "fetch"), ("fetch", "build")])
def test_a_failure_lets_the_other_branch_finish_its_step_and_starts_nothing_new(
        workdir: Workdir, profile: Profile, monkeypatch: pytest.MonkeyPatch, failing: str, other: str) -> None:
    monkeypatch.setenv("TEST_STEPS_MEET", "build,fetch")
    monkeypatch.setenv("TEST_STEPS_FAIL", failing)
    monkeypatch.setenv("TEST_STEPS_AFTER_FAILED", f"{other}:{failing}")  # the other ends after the failure
    rb = make(workdir, profile)
    result = rb.up(Selection())
    assert not result.ok and result.failed_step == failing
    assert result.error is not None and result.error.message == f"{failing} failed on purpose"
    assert sorted(ts.journal()) == sorted(["root", "build", "fetch"])  # patch, lint, join never started
    state = load_state(workdir.state_file)
    assert state.steps[other].status == StepStatus.DONE and state.steps[failing].status == StepStatus.FAILED
    assert not {"patch", "lint", "join"} & set(state.steps)
    view = rows(workdir, rb)
    assert view[other] == "done" and view[failing] == "failed"  # the other branch is not stale: it needs no failed

    for var in ("TEST_STEPS_FAIL", "TEST_STEPS_AFTER_FAILED", "TEST_STEPS_MEET"):
        monkeypatch.delenv(var)
    resumed = rb.up(Selection())
    assert resumed.ok
    actions = {d.step: d.action for d in resumed.decisions}
    assert actions == {"root": "skip", other: "skip", failing: "run", "patch": "run", "lint": "run", "join": "run"}
    assert load_state(workdir.state_file).steps[other].attempts == 1


def test_stale_follows_needs_not_order(workdir: Workdir, profile: Profile) -> None:
    rb = make(workdir, profile)
    state = State()
    for name in ts.BRANCHES:
        state.step(name).status = StepStatus.DONE
    state.step("build").status = StepStatus.FAILED
    view = {r["step"]: r["status"] for r in status_doc(state, rb.names, rb.needs)["steps"]}
    assert view == {"root": "done", "build": "failed", "patch": "stale", "fetch": "done", "lint": "stale",
                    "join": "stale"}
    by_order = {r["step"]: r["status"] for r in status_doc(state, rb.names)["steps"]}  # no needs: all before
    assert by_order["fetch"] == "stale"


def test_status_names_every_running_step() -> None:
    state = State()
    for name in ("build", "fetch"):
        record = state.step(name)
        record.status, record.pid = StepStatus.RUNNING, os.getpid()
    doc = status_doc(state, list(ts.BRANCHES))
    assert doc["running"] == ["build", "fetch"]


def test_selection_semantics_hold_with_branches(workdir: Workdir, profile: Profile) -> None:
    rb = make(workdir, profile)
    result = rb.up(Selection(until="patch"))  # fetch is independent but after --until: not selected
    assert result.ok and ts.journal() == ["root", "build", "patch"]
    with pytest.raises(UsageError, match="step lint needs step fetch"):
        rb.up(Selection(only=("lint",)))
    assert rb.up(Selection(only=("fetch", "lint"))).ok
    assert ts.journal()[3:] == ["fetch", "lint"]
    redo = rb.up(Selection(redo=("fetch",)))
    assert redo.ok and {d.step: d.action for d in redo.decisions}["fetch"] == "run"
    assert ts.journal()[5:] == ["fetch", "join"]  # join ran for the first time; nothing else again


def test_a_step_after_another_waits_for_it_in_up_but_runs_alone_without_it(workdir: Workdir, profile: Profile,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rb = make(workdir, profile)
    assert rb.up(Selection(only=("fetch",))).ok  # as `dsv4setup download`: root is not needed
    assert ts.journal() == ["fetch"]
    monkeypatch.setenv("TEST_STEPS_FAIL", "root")
    result = rb.up(Selection(redo=("fetch",)))
    assert result.failed_step == "root" and ts.journal() == ["fetch", "root"]  # fetch waited, then never started


def test_a_need_listed_after_its_step_is_refused(workdir: Workdir, profile: Profile) -> None:
    steps = [ts.MarkerStep("a", ("b",)), ts.MarkerStep("b", ())]
    with pytest.raises(UsageError, match="step a needs b, listed after it"):
        Runbook(steps, workdir, profile)


def test_concurrent_changes_and_saves_lose_nothing(tmp_path: Path) -> None:
    """Steps finishing together: each thread changes its own record and saves the whole state, under the
    state's lock; the file is always whole and at the end holds every change."""
    path = tmp_path / "state.json"
    state = State()
    torn: list[str] = []

    def work(name: str) -> None:
        for attempt in range(1, 41):
            with state.lock:
                state.step(name).attempts = attempt
                save_state(path, state)
            try:
                json.loads(path.read_text())
            except ValueError as exc:
                torn.append(str(exc))

    threads = [threading.Thread(target=work, args=(f"s{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torn == []
    assert {n: r.attempts for n, r in load_state(path).steps.items()} == {f"s{i}": 40 for i in range(6)}
    assert datetime.fromisoformat(load_state(path).updated_at)


def test_next_expects_the_longest_chain_of_an_overlapped_run_not_the_sum(workdir: Workdir, profile: Profile) -> None:
    from dsv4setup.next_action import expected_run_s

    timed = profile.model_copy(update={"expected_s": {"root": 5, "build": 100, "patch": 20, "fetch": 300, "lint": 10,
                                                      "join": 30}})
    waits = make(workdir, timed).waits
    assert waits["fetch"] == ("root",) and waits["lint"] == ("fetch", "build")
    assert expected_run_s(timed, list(ts.BRANCHES), waits) == 5 + 300 + 10 + 30  # fetch beside build -> patch
    assert expected_run_s(timed, list(ts.BRANCHES)) == 465  # one after another (up --sequential)
    assert expected_run_s(timed, ["build", "patch", "lint", "join"], waits) == 100 + 20 + 30  # fetch already done
    assert expected_run_s(timed, ["build", "extra"], waits) is None  # a step with no usual time: unknown
