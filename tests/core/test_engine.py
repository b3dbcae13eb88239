"""Engine behaviour with small real steps (marker files on disk, a journal of executions)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from dsv4setup.core.errors import LockHeldError, StateError, UsageError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.core.lock import workdir_lock
from dsv4setup.core.outputs import StepOutputs
from dsv4setup.core.state import STATE_SCHEMA, StepStatus, backup_state, load_state, reset_steps, save_state
from dsv4setup.core.status import status_doc
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, RunContext, Selection, Step
from dsv4setup.profiles.model import Profile
from tests.core import steps_for_tests as ts

pytestmark = pytest.mark.usefixtures("steps_dir")  # every test: markers in its tmp_path


def make(workdir: Workdir, profile: Profile) -> Runbook:
    return Runbook(ts.steps(), workdir, profile)


def test_up_runs_every_step_once_then_is_a_verified_noop(workdir: Workdir, profile: Profile) -> None:
    rb = make(workdir, profile)
    assert rb.up(Selection()).ok
    assert ts.journal() == list(ts.NAMES)
    second = rb.up(Selection())
    assert second.ok and ts.journal() == list(ts.NAMES)
    assert [d.action for d in second.decisions] == ["skip"] * 4
    assert all(d.reason.startswith("done, verified") for d in second.decisions)
    state = load_state(workdir.state_file)
    assert all(state.steps[n].status == StepStatus.DONE and state.steps[n].attempts == 1 for n in ts.NAMES)
    assert (workdir.log_file("alpha")).read_text().count("running alpha") == 1


def test_resume_after_failure_reruns_only_the_failed_and_later_steps(workdir: Workdir, profile: Profile,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rb = make(workdir, profile)
    monkeypatch.setenv("TEST_STEPS_FAIL", "gamma")
    result = rb.up(Selection())
    assert not result.ok and result.failed_step == "gamma"
    assert result.error is not None and result.error.fix == "unset TEST_STEPS_FAIL"
    assert result.error.log == str(workdir.log_file("gamma"))
    assert any("failed on purpose" in line for line in result.log_tail)
    state = load_state(workdir.state_file)
    assert state.steps["gamma"].status == StepStatus.FAILED and "delta" not in state.steps
    monkeypatch.delenv("TEST_STEPS_FAIL")
    assert rb.up(Selection()).ok
    assert ts.journal() == ["alpha", "beta", "gamma", "gamma", "delta"]
    assert load_state(workdir.state_file).steps["gamma"].attempts == 2


def test_changed_inputs_rerun_the_step(workdir: Workdir, profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    rb = make(workdir, profile)
    rb.up(Selection())
    monkeypatch.setenv("TEST_STEPS_INPUT", "v2")
    decisions = rb.plan(Selection())
    assert all(d.action == "run" and d.reason == "inputs changed: input" for d in decisions)
    rb.up(Selection())
    assert ts.journal() == list(ts.NAMES) * 2


def test_drift_reruns_the_step_whose_postcondition_broke(workdir: Workdir, profile: Profile,
                                                         steps_dir: Path) -> None:
    rb = make(workdir, profile)
    rb.up(Selection())
    (steps_dir / "beta.done").unlink()  # e.g. someone reinstalled vLLM: patches gone
    decisions = {d.step: d for d in rb.plan(Selection())}
    assert decisions["beta"].action == "run" and decisions["beta"].reason.startswith("drift: marker beta.done")
    assert decisions["alpha"].action == "skip"
    rb.up(Selection())
    assert ts.journal() == [*ts.NAMES, "beta"]


def test_from_until_only_and_redo(workdir: Workdir, profile: Profile) -> None:
    rb = make(workdir, profile)
    assert rb.up(Selection(until="beta")).ok
    assert ts.journal() == ["alpha", "beta"]
    plan = {d.step: d.action for d in rb.plan(Selection(start="gamma"))}
    assert plan == {"alpha": "not-selected", "beta": "not-selected", "gamma": "run", "delta": "run"}
    assert rb.up(Selection(only=("gamma",))).ok
    assert ts.journal() == ["alpha", "beta", "gamma"]
    assert rb.up(Selection(redo=("alpha",))).ok
    assert ts.journal() == ["alpha", "beta", "gamma", "alpha", "delta"]


def test_selection_needs_earlier_steps_done(workdir: Workdir, profile: Profile) -> None:
    rb = make(workdir, profile)
    with pytest.raises(UsageError, match="step gamma needs step beta"):
        rb.up(Selection(only=("gamma",)))
    with pytest.raises(UsageError, match="--from nosuch: no such step"):
        rb.plan(Selection(start="nosuch"))
    with pytest.raises(UsageError, match="comes after"):
        rb.plan(Selection(start="delta", until="alpha"))
    assert ts.journal() == []


def test_dry_run_plan_writes_nothing(workdir: Workdir, profile: Profile) -> None:
    decisions = make(workdir, profile).plan(Selection())
    assert [d.reason for d in decisions] == ["not run yet"] * 4
    assert not workdir.state_file.exists() and ts.journal() == []


def test_running_step_with_dead_pid_is_interrupted_and_rerun(workdir: Workdir, profile: Profile) -> None:
    rb = make(workdir, profile)
    rb.up(Selection())
    state = load_state(workdir.state_file)
    record = state.step("gamma")
    record.status, record.pid = StepStatus.RUNNING, 2**22 + 12345  # no such process
    save_state(workdir.state_file, state)
    assert load_state(workdir.state_file).steps["gamma"].is_interrupted()
    decisions = {d.step: d for d in rb.plan(Selection())}
    assert decisions["gamma"].action == "run" and "interrupted" in decisions["gamma"].reason
    rb.up(Selection())
    assert ts.journal() == [*ts.NAMES, "gamma"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is corrupt"),
    (json.dumps({"schema": "dsv4setup.state/99", "steps": {}}), "has schema 'dsv4setup.state/99'"),
    (json.dumps({"schema": STATE_SCHEMA, "steps": {"alpha": {"status": "weird"}}}), "invalid at steps.alpha.status"),
])
def test_bad_state_file_is_a_clear_error_and_is_kept(workdir: Workdir, profile: Profile, content: str,
                                                    message: str) -> None:
    workdir.state_file.write_text(content)
    with pytest.raises(StateError, match=message) as info:
        make(workdir, profile).up(Selection())
    assert str(workdir.state_file) in info.value.message
    damaged_step = ["--step", "alpha"] if "steps.alpha" in message else ["--all"]
    assert info.value.command == shlex.join(["dsv4setup", "reset", "--workdir", str(workdir.root), *damaged_step])
    assert f"dsv4setup reset {' '.join(damaged_step)}" in (info.value.fix or "")
    assert workdir.state_file.read_text() == content  # never silently discarded
    assert ts.journal() == []


def test_lock_held_refuses_at_once(workdir: Workdir, profile: Profile) -> None:
    with workdir_lock(workdir.lock_file, "up"), pytest.raises(LockHeldError, match=f"pid {os.getpid()}"):
        make(workdir, profile).up(Selection())
    assert ts.journal() == []


def test_crash_during_state_write_leaves_old_state_readable(workdir: Workdir, profile: Profile,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rb = make(workdir, profile)
    rb.up(Selection(until="alpha"))
    before = workdir.state_file.read_text()

    def crash(*_args: object, **_kw: object) -> None:
        raise OSError("disk full (simulated crash before the rename)")

    monkeypatch.setattr("dsv4setup.core.fsutil.os.replace", crash)
    state = load_state(workdir.state_file)
    state.step("beta").attempts = 7
    with pytest.raises(OSError, match="simulated"):
        save_state(workdir.state_file, state)
    assert workdir.state_file.read_text() == before
    assert load_state(workdir.state_file).steps["alpha"].status == StepStatus.DONE
    assert [p.name for p in workdir.root.iterdir() if p.name.endswith(".tmp")] == []


def test_unexpected_exception_is_recorded_with_traceback_in_log(workdir: Workdir, profile: Profile,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rb = make(workdir, profile)

    def boom(_ctx: object) -> dict[str, str]:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(rb.by_name["alpha"], "run", boom)
    result = rb.up(Selection())
    assert not result.ok and result.error is not None
    assert "internal error in step alpha: ZeroDivisionError: bug" in result.error.message
    assert "Traceback" in workdir.log_file("alpha").read_text()
    assert load_state(workdir.state_file).steps["alpha"].status == StepStatus.FAILED


def test_reset_step_recovers_a_state_damaged_only_in_that_step(workdir: Workdir, profile: Profile) -> None:
    rb = make(workdir, profile)
    rb.up(Selection())
    doc = json.loads(workdir.state_file.read_text())
    doc["steps"]["gamma"]["status"] = "weird"
    workdir.state_file.write_text(json.dumps(doc))
    with pytest.raises(StateError, match="steps.gamma.status") as info:
        load_state(workdir.state_file)
    assert "reset --step gamma" in (info.value.fix or "")
    state = reset_steps(workdir.state_file, ["gamma"])
    assert "gamma" not in state.steps and state.steps["alpha"].status == StepStatus.DONE
    decisions = {d.step: d.action for d in rb.plan(Selection())}
    assert decisions == {"alpha": "skip", "beta": "skip", "gamma": "run", "delta": "skip"}


def test_steps_after_a_failed_step_are_stale_never_done(workdir: Workdir, profile: Profile,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rb = make(workdir, profile)
    assert rb.up(Selection()).ok
    monkeypatch.setenv("TEST_STEPS_FAIL", "beta")
    assert not rb.up(Selection(redo=("beta",))).ok
    rows = {r["step"]: r["status"] for r in status_doc(load_state(workdir.state_file), list(ts.NAMES))["steps"]}
    assert rows == {"alpha": "done", "beta": "failed", "gamma": "stale", "delta": "stale"}


def test_log_tail_holds_only_the_failing_attempt(workdir: Workdir, profile: Profile,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_STEPS_FAIL", "alpha")
    rb = make(workdir, profile)
    rb.up(Selection())
    tail = rb.up(Selection()).log_tail
    assert ": attempt 2 " in tail[0] and not any(": attempt 1 " in line for line in tail)
    assert sum("failed on purpose" in line for line in tail) == 1


class FetchOutputs(StepOutputs):
    step = "fetch"


class ReportingStep(Step):
    """Reports a phase and a byte count, then reads the state file as another process (`status`) would."""

    name = "fetch"
    description = "reports progress"
    Outputs = FetchOutputs
    seen: dict[str, object] = {}

    def inputs(self, ctx: RunContext) -> dict[str, object]:
        return {}

    def is_done(self, ctx: RunContext) -> Finding:
        return postcondition(bool(self.seen), "reported")

    def run(self, ctx: RunContext) -> dict[str, object]:
        ctx.transfer(512, 2048, 100.0)
        row = status_doc(load_state(ctx.workdir.state_file), ["fetch"])["steps"][0]
        type(self).seen = row["progress"]
        return {}


def test_running_step_progress_is_readable_from_the_state_file(workdir: Workdir, profile: Profile) -> None:
    timed = profile.model_copy(update={"expected_s": {"fetch": 90}})
    assert Runbook([ReportingStep()], workdir, timed).up(Selection()).ok
    seen = ReportingStep.seen
    assert isinstance(seen, dict)
    assert (seen["bytes_done"], seen["bytes_total"], seen["rate_bps"], seen["expected_s"]) == (512, 2048, 100.0, 90)
    assert seen["phase"] == "starting" and isinstance(seen["elapsed_s"], float)
    assert load_state(workdir.state_file).steps["fetch"].progress is None  # only while running


def test_plan_after_reset_all_says_verify_then_run(workdir: Workdir, profile: Profile) -> None:
    rb = make(workdir, profile)
    assert rb.up(Selection()).ok
    backup_state(workdir.state_file)
    assert all(d.reason.endswith("verify, then run if needed") for d in rb.plan(Selection()))
    fresh = Workdir(workdir.root.parent / "fresh").ensure()
    assert {d.reason for d in make(fresh, profile).plan(Selection())} == {"not run yet"}
