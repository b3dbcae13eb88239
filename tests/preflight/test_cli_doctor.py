"""`dsv4setup doctor` end to end: in-process through the CLI's main, and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dsv4setup.cli import main
from tests.preflight.conftest import FIXTURES, doctor_validator, hardware_validator


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", *args])
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def doctor_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run_cli(capsys, *args, "--json")
    return code, json.loads(out)


def checks_of(doc: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in doc["checks"]}


def test_json_for_a_passing_snapshot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, doc = doctor_json(capsys, "--snapshot", str(FIXTURES / "rtx-pro-6000-maxq-x2-iommu.json"),
                            "--workdir", str(tmp_path))
    assert code == 0
    assert list(doctor_validator().iter_errors(doc)) == []
    assert set(doc) == {"schema", "ok", "demo", "notice", "checks", "recommendation", "bandwidth", "snapshot",
                        "workdir", "workdir_chosen_by", "profile_chosen_by"}
    assert doc["bandwidth"] is None  # measured only with --bandwidth
    assert doc["profile_chosen_by"] == "best match"
    assert doc["schema"] == "dsv4setup.doctor/3" and doc["ok"] is True
    rec = doc["recommendation"]
    assert rec["profile"] == "rtx-pro-6000-maxq-x2" and rec["tensor_parallel_size"] == 2
    assert "--disable-custom-all-reduce" in rec["serve_args"] and rec["env"]["NCCL_P2P_DISABLE"] == "1"
    assert doc["snapshot"]["host"]["hostname"] == "maxq-ws"


def test_a_failed_check_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, doc = doctor_json(capsys, "--snapshot", str(FIXTURES / "h200-x1.json"), "--workdir", str(tmp_path))
    assert code == 1 and doc["ok"] is False
    assert checks_of(doc)["gpu.memory"] == "fail"
    assert list(doctor_validator().iter_errors(doc)) == []


def test_warnings_keep_exit_0(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "warn.json"
    doc = json.loads((FIXTURES / "rtx-pro-6000-maxq-x2.json").read_text())
    doc["host"]["iommu"] = "unknown"
    doc["host"]["shm_bytes"] = 4 * 10**9
    path.write_text(json.dumps(doc))
    code, out = doctor_json(capsys, "--snapshot", str(path), "--workdir", str(tmp_path))
    assert code == 0 and out["ok"] is True
    assert checks_of(out)["host.shm"] == "warn"


def test_named_profile_that_does_not_fit(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, doc = doctor_json(capsys, "--snapshot", str(FIXTURES / "h200-x8-nvlink.json"), "--workdir", str(tmp_path),
                            "--profile", "rtx-pro-6000-maxq-x2")
    checks = checks_of(doc)
    assert code == 1
    assert checks["host.profile"] == "warn" and checks["toolkit.arch"] == "fail"
    assert doc["recommendation"]["profile"] == "rtx-pro-6000-maxq-x2"


def test_unknown_profile_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "--snapshot", str(FIXTURES / "b200-x2.json"), "--workdir", str(tmp_path),
                           "--profile", "no-such-profile", "--json")
    assert code == 2
    assert "unknown profile 'no-such-profile'" in json.loads(out)["message"]


@pytest.mark.parametrize(("content", "problem"), [
    (None, "does not exist"),
    ("{not json", "is not JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ('{"schema": "dsv4setup.state/1"}', "is not a dsv4setup hardware snapshot: schema is 'dsv4setup.state/1'"),
    ("[1, 2]", "is not a dsv4setup hardware snapshot: schema is 'list'"),
    ("BROKEN_CC", "gpus[0].compute_capability: expected array or null, got string '12.0'"),
])
def test_bad_snapshot_file_exits_2_naming_file_and_problem(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                           content: str | None, problem: str) -> None:
    path = tmp_path / "snap.json"
    if content == "BROKEN_CC":
        doc = json.loads((FIXTURES / "rtx-pro-6000-maxq-x2.json").read_text())
        doc["gpus"][0]["compute_capability"] = "12.0"
        content = json.dumps(doc)
    if content is not None:
        path.write_text(content)
    code, out, err = run_cli(capsys, "--snapshot", str(path), "--workdir", str(tmp_path))
    assert code == 2
    assert f"snapshot {path} " in err and problem in err and "fix:" in err and "Traceback" not in err
    assert out == ""
    code, out, _ = run_cli(capsys, "--snapshot", str(path), "--workdir", str(tmp_path), "--json")
    error = json.loads(out)
    assert code == 2 and error["schema"] == "dsv4setup.error/2" and error["exit_code"] == 2
    assert str(path) in error["message"] and problem in error["message"]


def test_human_table_puts_failures_first_with_their_fix(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(capsys, "--snapshot", str(FIXTURES / "container-small-shm.json"),
                             "--workdir", str(tmp_path))
    assert code == 1
    lines = [line for line in out.splitlines() if "│" in line]
    first_row = next(line for line in lines if ("✗" in line or "✓" in line or "!" in line))
    assert "host.shm" in first_row and "--shm-size=16g --ipc=host" in first_row
    assert out.index("topology.iommu") < out.index("gpu.present")  # the area with a warning before all-pass ones
    assert "recommendation: profile rtx-pro-6000-x2" in out
    assert "--disable-custom-all-reduce" in out
    assert "1 check(s) failed" in err


def test_this_machine_fails_without_a_profile_and_passes_as_the_demo(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    """The real probe on this machine (no GPU): no profile is usable until --profile cpu-tiny names the demo."""
    saved = tmp_path / "out" / "snap.json"
    code, doc = doctor_json(capsys, "--workdir", str(tmp_path / "wd"))
    if doc["snapshot"]["gpus"]:
        pytest.skip("this machine has NVIDIA GPUs")
    assert code == 1 and doc["ok"] is False and doc["recommendation"] is None
    assert checks_of(doc)["host.profile"] == "fail"
    code, doc = doctor_json(capsys, "--workdir", str(tmp_path / "wd"), "--profile", "cpu-tiny",
                            "--save-snapshot", str(saved))
    assert code == 0, [c for c in doc["checks"] if c["status"] == "fail"]
    assert doc["demo"] is True and "not DeepSeek-V4-Flash" in doc["notice"]
    assert doc["recommendation"]["profile"] == "cpu-tiny" and doc["recommendation"]["demo"] is True
    assert checks_of(doc)["gpu.memory"] == "skip"
    on_disk = json.loads(saved.read_text())
    assert list(hardware_validator().iter_errors(on_disk)) == []
    assert on_disk["host"] == doc["snapshot"]["host"]
    code, again = doctor_json(capsys, "--snapshot", str(saved), "--workdir", str(tmp_path / "wd"), "--profile",
                              "cpu-tiny")
    assert code == 0 and checks_of(again) == checks_of(doc)


def _doctor_process(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSV4SETUP_WORKDIR": str(tmp_path), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "dsv4setup", "doctor", *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def test_no_gpu_no_driver_fails_without_a_profile_and_runs_the_demo_with_one(tmp_path: Path) -> None:
    """Real CLI subprocesses on a snapshot of a box without NVIDIA GPU or driver."""
    snap = str(FIXTURES / "cpu-only.json")
    proc = _doctor_process(tmp_path, "--snapshot", snap, "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert list(doctor_validator().iter_errors(doc)) == []
    failed = {c["id"]: c for c in doc["checks"] if c["status"] == "fail"}
    assert set(failed) == {"driver.present", "host.profile"} and doc["recommendation"] is None
    fix = failed["driver.present"]["fix"]
    assert "lspci | grep -i nvidia" in fix and "R580" in fix and "--profile cpu-tiny" in fix
    human = _doctor_process(tmp_path, "--snapshot", snap)
    assert human.returncode == 1 and "lspci | grep -i nvidia" in human.stdout
    demo = _doctor_process(tmp_path, "--snapshot", snap, "--profile", "cpu-tiny", "--json")
    assert demo.returncode == 0, demo.stdout
    doc = json.loads(demo.stdout)
    assert doc["ok"] is True and doc["demo"] is True and "tiny generated DeepSeek-V3 + MTP" in doc["notice"]
    human = _doctor_process(tmp_path, "--snapshot", snap, "--profile", "cpu-tiny")
    assert human.returncode == 0 and "not DeepSeek-V4-Flash" in human.stdout + human.stderr


def test_apple_silicon_is_out_of_scope_with_the_reason(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = json.loads((FIXTURES / "cpu-only.json").read_text())
    doc["host"].update(arch="arm64", os="Darwin 24.1.0", kernel="24.1.0", nvidia_pci_gpus=None)
    path = tmp_path / "mac.json"
    path.write_text(json.dumps(doc))
    code, out = doctor_json(capsys, "--snapshot", str(path), "--workdir", str(tmp_path))
    failed = {c["id"]: c for c in out["checks"] if c["status"] == "fail"}
    assert code == 1 and {"host.platform", "host.profile", "driver.present"} <= set(failed)
    for check in failed.values():
        assert "out of scope" in check["summary"] + check["fix"]
    assert "MLX" in failed["host.platform"]["summary"]


def test_save_snapshot_to_an_unwritable_place_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, _ = run_cli(capsys, "--snapshot", str(FIXTURES / "b200-x2.json"), "--workdir", str(tmp_path),
                           "--save-snapshot", str(blocker / "snap.json"), "--json")
    assert code == 2 and "cannot write the snapshot to" in json.loads(out)["message"]


def test_real_subprocess_json(tmp_path: Path) -> None:
    env = {**os.environ, "DSV4SETUP_WORKDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "dsv4setup", "doctor", "--snapshot",
                           str(FIXTURES / "gh200-x2.json"), "--json"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert list(doctor_validator().iter_errors(doc)) == []
    assert doc["recommendation"]["env"]["NCCL_P2P_DISABLE"] == "1"


def test_the_workdir_picks_the_profile_and_its_overrides_apply(tmp_path: Path) -> None:
    """After `up --profile cpu-tiny` in a workdir, `doctor` there judges against cpu-tiny; the workdir's
    dsv4setup.yaml wins over the state and its values apply; a corrupt state file does not stop the doctor."""
    from dsv4setup.core.state import State, save_state
    from dsv4setup.core.workdir import Workdir
    from dsv4setup.preflight.select import select_profile

    wd = Workdir(tmp_path / "wd").ensure()
    snap = json.loads((FIXTURES / "h200-x8-nvlink.json").read_text())
    save_state(wd.state_file, State(profile="cpu-tiny"))
    choice = select_profile(snap, wd)
    assert choice.profile is not None and choice.profile.name == "cpu-tiny" and choice.how == (
        f"last used in the workdir {wd.root} (its state.json)")
    assert select_profile(snap, wd, use_workdir=False).profile.name == "h200-tp2"  # type: ignore[union-attr]
    wd.overrides_file.write_text("profile: h200-tp2\nserve:\n  max_model_len: 65536\n")
    choice = select_profile(snap, wd)
    assert choice.how == f"chosen in the workdir: {wd.overrides_file}" and choice.profile is not None
    assert choice.profile.name == "h200-tp2" and choice.profile.serve.max_model_len == 65536
    wd.overrides_file.unlink()
    wd.state_file.write_text("{corrupt")
    choice = select_profile(snap, wd)
    assert choice.how == "best match" and choice.profile is not None and choice.profile.name == "h200-tp2"


def test_a_multi_node_profiles_next_names_the_node_option_and_the_nodes(capsys: pytest.CaptureFixture[str],
                                                                         tmp_path: Path) -> None:
    code, _out, err = run_cli(capsys, "--snapshot", str(FIXTURES / "cpu-only.json"), "--workdir", str(tmp_path),
                              "--profile", "cpu-tiny-x2")
    assert code == 0
    assert "next: dsv4setup up --profile cpu-tiny-x2 --node NAME, on every node (NAME: node1, node2)" in " ".join(
        err.split())
