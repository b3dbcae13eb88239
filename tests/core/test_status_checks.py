"""Issue 26 through the CLI entry point on marker runbooks (real engine, state, files and locks):
`status` checks each done step as a no-op `up` does and shows what drifted; `next` hands a run that may
exceed 60 s out detached with its `wait` and `next`; `plan` runs smoke when serve will restart and says
when the server needs its key; `doctor` points at `status` when the workdir drifted."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4setup.cli import main
from dsv4setup.core.lock import workdir_lock
from dsv4setup.core.workdir import Workdir
from tests.cli_docs import run_cli


def human(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out + captured.err


@pytest.fixture
def done(capsys: pytest.CaptureFixture[str], workdir: Workdir, steps_dir: Path,
         monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Workdir:
    """A cpu-tiny workdir whose runbook (marker steps) ran to the end."""
    factory = getattr(request, "param", "steps")
    monkeypatch.setenv("DSV4SETUP_RUNBOOK", f"tests.core.steps_for_tests:{factory}")
    monkeypatch.setenv("NO_COLOR", "1")
    workdir.overrides_file.write_text("profile: cpu-tiny\n")
    code, _ = run_cli(capsys, "up", "--workdir", str(workdir.root), "--yes", "--json")
    assert code == 0
    return workdir


def rows(doc: dict) -> dict[str, dict]:
    return {row["step"]: row for row in doc["steps"]}


def test_status_shows_a_step_whose_proof_is_gone_as_drifted_and_no_verify_the_record(
        capsys: pytest.CaptureFixture[str], done: Workdir, steps_dir: Path) -> None:
    (steps_dir / "beta.done").unlink()
    before = done.state_file.read_bytes()
    code, doc = run_cli(capsys, "status", "--workdir", str(done.root), "--json")
    assert code == 0 and doc["schema"] == "dsv4setup.status/6"
    assert rows(doc)["beta"]["status"] == "drifted" and "beta.done" in rows(doc)["beta"]["drift"]
    assert [rows(doc)[n]["status"] for n in ("alpha", "gamma", "delta")] == ["done"] * 3
    assert rows(doc)["alpha"]["drift"] is None and doc["server"] is None  # no server recorded here
    assert doc["verification"]["checked"] and doc["verification"]["drifted"] == ["beta"]
    assert doc["workdir"] == str(done.root) and doc["workdir_chosen_by"] == "--workdir"
    assert done.state_file.read_bytes() == before  # a check writes nothing

    code, record = run_cli(capsys, "status", "--workdir", str(done.root), "--no-verify", "--json")
    assert code == 0 and rows(record)["beta"]["status"] == "done" and record["server"] is None
    assert not record["verification"]["checked"] and "--no-verify" in record["verification"]["skipped_because"]

    code, text = human(capsys, "status", "--workdir", str(done.root))
    assert code == 0 and "drifted" in text and "beta.done" in text and "dsv4setup next --workdir" in text
    assert f"workdir {done.root} (--workdir)" in text


def test_changed_inputs_are_drift_and_a_held_lock_skips_the_checks(
        capsys: pytest.CaptureFixture[str], done: Workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_STEPS_INPUT", "v2")
    _, doc = run_cli(capsys, "status", "--workdir", str(done.root), "--json")
    assert doc["verification"]["drifted"] == ["alpha", "beta", "gamma", "delta"]
    assert rows(doc)["gamma"]["drift"] == "inputs changed: input"
    with workdir_lock(done.lock_file, "up"):
        _, held = run_cli(capsys, "status", "--workdir", str(done.root), "--json")
    assert not held["verification"]["checked"] and "a run holds the workdir" in held["verification"]["skipped_because"]
    assert rows(held)["gamma"]["status"] == "done"


def test_doctor_points_at_status_when_the_workdir_drifted(capsys: pytest.CaptureFixture[str], done: Workdir,
                                                          steps_dir: Path) -> None:
    _, text = human(capsys, "doctor", "--workdir", str(done.root))
    assert "has drifted" not in text and f"workdir {done.root} (--workdir)" in text
    assert f"last used in the workdir {done.root}" in text or f"chosen in the workdir: {done.overrides_file}" in text
    (steps_dir / "gamma.done").unlink()
    _, text = human(capsys, "doctor", "--workdir", str(done.root))
    assert f"the workdir {done.root} has drifted: gamma" in text and f"dsv4setup status --workdir {done.root}" in text
    _, doc = run_cli(capsys, "doctor", "--workdir", str(done.root), "--json")
    assert doc["workdir"] == str(done.root) and doc["workdir_chosen_by"] == "--workdir"
    assert doc["profile_chosen_by"] == f"chosen in the workdir: {done.overrides_file}"


@pytest.mark.parametrize("done", ["serving_steps"], indirect=True)
def test_a_restarting_serve_is_handed_out_detached_and_smoke_runs_after_it(
        capsys: pytest.CaptureFixture[str], done: Workdir, steps_dir: Path) -> None:
    """cpu-tiny expects serve 60 s + smoke 10 s: over 60 s, so `next` gives `up --detach` and its wait."""
    (steps_dir / "serve.done").unlink()
    _, plan = run_cli(capsys, "plan", "--workdir", str(done.root), "--json")
    actions = {d["step"]: (d["action"], d["reason"]) for d in plan["steps"]}
    assert actions["serve"][0] == "run" and actions["download"][0] == "skip"
    assert actions["smoke"] == ("run", "after serve runs: its proof is for what serve leaves behind")
    _, nxt = run_cli(capsys, "next", "--workdir", str(done.root), "--json")
    assert nxt["schema"] == "dsv4setup.next/3" and nxt["action"] == "run" and nxt["expected_s"] == 70
    assert nxt["command"] == ["dsv4setup", "up", "--workdir", str(done.root), "--yes", "--detach", "--json"]
    assert nxt["then"] == [["dsv4setup", "wait", "--workdir", str(done.root), "--timeout", "100", "--json"],
                           ["dsv4setup", "next", "--workdir", str(done.root), "--json"]]
    code, text = human(capsys, "next", "--workdir", str(done.root))
    assert code == 0 and "then: dsv4setup wait" in text


@pytest.mark.parametrize("done", ["serving_steps"], indirect=True)
def test_a_short_run_stays_in_the_foreground(capsys: pytest.CaptureFixture[str], done: Workdir,
                                             steps_dir: Path) -> None:
    (steps_dir / "download.done").unlink()  # the download alone: cpu-tiny expects 2 s
    _, nxt = run_cli(capsys, "next", "--workdir", str(done.root), "--json")
    assert nxt["command"] == ["dsv4setup", "up", "--workdir", str(done.root), "--yes", "--json"]
    assert nxt["then"] is None and nxt["expected_s"] == 2


def test_plan_says_when_the_server_needs_its_key(capsys: pytest.CaptureFixture[str], done: Workdir,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSV4SETUP_API_KEY", raising=False)
    _, local = run_cli(capsys, "plan", "--workdir", str(done.root), "--json")
    assert local["auth"] == {"required": False, "key": None, "text": "none (loopback only)"}
    wide = ("plan", "--workdir", str(done.root), "--set", "serve.host=0.0.0.0")
    _, doc = run_cli(capsys, *wide, "--json")
    assert doc["auth"] == {"required": True, "key": "secrets/api_key", "text": "required (key in secrets/api_key)"}
    _, text = human(capsys, *wide)
    assert "auth: required (key in secrets/api_key)" in text
    assert not (done.root / "secrets").exists()  # planning generates no key


def test_a_workdir_found_as_the_last_one_used_is_named_with_its_path(
        capsys: pytest.CaptureFixture[str], done: Workdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another checkout, no --workdir: the header and the JSON say which workdir and why, its path included;
    doctor says its profile is the one last used in that workdir (path included)."""
    from dsv4setup.core.workdir import last_used_file, remember

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("DSV4SETUP_WORKDIR", raising=False)
    elsewhere = tmp_path / "fresh-clone"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    remember(done.root)
    done.overrides_file.unlink()  # the profile comes from the state: the one `up` last ran with
    why = f"the last one used (recorded in {last_used_file()})"
    _, doc = run_cli(capsys, "status", "--json")
    assert doc["workdir"] == str(done.root) and doc["workdir_chosen_by"] == why
    _, plan = run_cli(capsys, "plan", "--json")
    assert plan["workdir"] == str(done.root) and plan["workdir_chosen_by"] == why
    _, text = human(capsys, "status")
    assert f"workdir {done.root} ({why})" in text
    _, doctor = run_cli(capsys, "doctor", "--json")
    assert doctor["workdir"] == str(done.root) and doctor["workdir_chosen_by"] == why
    assert doctor["profile_chosen_by"] == f"last used in the workdir {done.root} (its state.json)"
    _, text = human(capsys, "doctor")
    assert f"workdir {done.root} ({why})" in text and f"last used in the workdir {done.root}" in text
