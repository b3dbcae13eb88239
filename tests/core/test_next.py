"""`dsv4setup next` on fresh, failed, running, interrupted and done workdirs (real engine and state)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsv4setup.cli import main
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.lock import workdir_lock
from dsv4setup.core.state import StepStatus, load_state, save_state
from dsv4setup.core.workdir import Workdir


@pytest.fixture(autouse=True)
def marker_runbook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("DSV4SETUP_RUNBOOK", "tests.core.steps_for_tests:steps")
    monkeypatch.setenv("TEST_STEPS_DIR", str(markers))
    monkeypatch.delenv("TEST_STEPS_FAIL", raising=False)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr().out
    doc = json.loads(out) if out.strip() else {}
    return int(info.value.code or 0), doc


def next_doc(capsys: pytest.CaptureFixture[str], workdir: Workdir) -> dict:
    code, doc = run_cli(capsys, "next", "--workdir", str(workdir.root), "--json")
    assert code == 0
    validate_document(doc)
    return doc


def test_fresh_workdir_says_run_up_with_the_chosen_profile(capsys: pytest.CaptureFixture[str],
                                                           workdir: Workdir) -> None:
    workdir.overrides_file.write_text("profile: cpu-tiny\n")
    doc = next_doc(capsys, workdir)
    assert doc["action"] == "run" and doc["command"][:2] == ["dsv4setup", "up"]
    assert "--profile" in doc["command"] and doc["step"] == "preflight"


def test_fresh_workdir_without_a_gpu_says_fix_naming_both_roads(capsys: pytest.CaptureFixture[str],
                                                               workdir: Workdir) -> None:
    """The real probe on this machine (no NVIDIA GPU): nothing is picked by itself, not even the CPU demo."""
    from dsv4setup.preflight.snapshot import take_snapshot

    if take_snapshot(workdir)["gpus"]:
        pytest.skip("this machine has NVIDIA GPUs")
    doc = next_doc(capsys, workdir)
    assert doc["action"] == "fix" and doc["command"][:2] == ["dsv4setup", "doctor"]
    assert "no NVIDIA GPU visible" in doc["why"] and "--profile cpu-tiny" in doc["fix"]


def test_failed_step_says_fix_with_its_hint(capsys: pytest.CaptureFixture[str], workdir: Workdir,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_STEPS_FAIL", "beta")
    code, up = run_cli(capsys, "up", "--workdir", str(workdir.root), "--profile", "cpu-tiny", "--json")
    assert code == 1
    validate_document(up)
    doc = next_doc(capsys, workdir)
    assert doc["action"] == "fix" and doc["step"] == "beta" and doc["fix"] == "unset TEST_STEPS_FAIL"
    assert doc["command"][:2] == ["dsv4setup", "up"]


def test_running_says_wait(capsys: pytest.CaptureFixture[str], workdir: Workdir) -> None:
    with workdir_lock(workdir.lock_file, "up"):
        doc = next_doc(capsys, workdir)
    assert doc["action"] == "wait" and "up" in doc["why"] and doc["command"][:2] == ["dsv4setup", "wait"]


def test_done_then_drift_then_interrupted(capsys: pytest.CaptureFixture[str], workdir: Workdir,
                                          tmp_path: Path) -> None:
    code, up = run_cli(capsys, "up", "--workdir", str(workdir.root), "--profile", "cpu-tiny", "--json")
    assert code == 0 and up["ok"]
    validate_document(up)
    assert next_doc(capsys, workdir)["action"] == "done"
    (tmp_path / "markers" / "gamma.done").unlink()
    doc = next_doc(capsys, workdir)
    assert doc["action"] == "run" and doc["step"] == "gamma" and doc["why"].startswith("gamma: drift")
    state = load_state(workdir.state_file)
    state.steps["delta"].status, state.steps["delta"].pid = StepStatus.RUNNING, 2**22 + 777
    save_state(workdir.state_file, state)
    doc = next_doc(capsys, workdir)
    assert doc["action"] == "run" and doc["step"] == "gamma"


def test_corrupt_state_says_fix_with_reset(capsys: pytest.CaptureFixture[str], workdir: Workdir) -> None:
    workdir.state_file.write_text("[]")
    doc = next_doc(capsys, workdir)
    assert doc["action"] == "fix" and doc["command"][:2] == ["dsv4setup", "reset"]


def test_status_reset_and_error_documents_follow_their_schemas(capsys: pytest.CaptureFixture[str],
                                                               workdir: Workdir) -> None:
    code, status = run_cli(capsys, "status", "--workdir", str(workdir.root), "--json")
    assert code == 0
    validate_document(status)
    code, reset = run_cli(capsys, "reset", "--workdir", str(workdir.root), "--step", "alpha", "--json")
    assert code == 0
    validate_document(reset)
    code, dry = run_cli(capsys, "up", "--workdir", str(workdir.root), "--profile", "cpu-tiny", "--dry-run", "--json")
    assert code == 0
    validate_document(dry)
    code, error = run_cli(capsys, "up", "--workdir", str(workdir.root), "--profile", "no-such-profile", "--json")
    assert code == 2
    validate_document(error)


def test_a_joined_worker_says_wait_for_the_head(capsys: pytest.CaptureFixture[str], workdir: Workdir) -> None:
    code, _up = run_cli(capsys, "up", "--workdir", str(workdir.root), "--profile", "cpu-tiny", "--json")
    assert code == 0
    state = load_state(workdir.state_file)
    cluster = state.step("cluster")  # as the cluster step records it on a worker
    cluster.status = StepStatus.DONE
    cluster.outputs = {"node": {"name": "node2", "role": "worker"}, "ray_address": "10.200.0.1:6379"}
    save_state(workdir.state_file, state)
    doc = next_doc(capsys, workdir)
    assert doc["action"] == "wait" and doc["step"] == "cluster" and doc["command"][:2] == ["dsv4setup", "status"]
    assert "node node2 is a worker" in doc["why"] and "10.200.0.1:6379" in doc["why"]


def test_fresh_multi_node_workdir_names_this_machines_node(capsys: pytest.CaptureFixture[str],
                                                           workdir: Workdir) -> None:
    """node2's address set to 127.0.0.1, an address of every machine: `next` finds this machine is node2."""
    workdir.overrides_file.write_text("profile: cpu-tiny-x2\nmultinode:\n  nodes:\n"
                                      "    - {name: node1, role: head, address: 10.200.0.1, gpus: 1}\n"
                                      "    - {name: node2, role: worker, address: 127.0.0.1, gpus: 1}\n")
    doc = next_doc(capsys, workdir)
    assert doc["action"] == "run" and doc["command"][-4:] == ["--node", "node2", "--detach", "--json"], doc
    assert doc["then"][0][:2] == ["dsv4setup", "wait"] and doc["then"][1][:2] == ["dsv4setup", "next"]
    assert "node node2 (worker, 127.0.0.1)" in doc["why"] and "on every node" in doc["why"]


def test_fresh_multi_node_workdir_on_no_nodes_address_says_which_node(capsys: pytest.CaptureFixture[str],
                                                                       workdir: Workdir) -> None:
    """10.200.0.x exist only in the e2e test's namespaces: the fix asks for --node, the command has no placeholder."""
    workdir.overrides_file.write_text("profile: cpu-tiny-x2\n")
    doc = next_doc(capsys, workdir)
    assert doc["action"] == "fix" and "--node" not in doc["command"], doc
    assert "which node of cpu-tiny-x2" in doc["why"] and "--node NAME" in doc["fix"] and "node1, node2" in doc["fix"]
