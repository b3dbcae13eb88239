"""On a real GPU machine: the live NVML snapshot, doctor's live verdict, the toolkit step next to
an existing CUDA toolkit (its probe kernel run on the GPU), and torch seeing the GPU.

Run them with scripts/gpu-check (it also saves the scrubbed snapshot as a fixture). Without a
GPU every test here skips with NVML's reason (conftest.py). The only stand-in is the preflight
step's output for the toolkit test, built from the live NVML facts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection
from dsv4setup.hardware.arch import arch_from_capability, parse_release
from dsv4setup.preflight.outputs import PreflightOutputs
from dsv4setup.preflight.scrub import scrub_snapshot
from dsv4setup.preflight.snapshot import save_snapshot, snapshot_errors, take_snapshot
from dsv4setup.profiles.loader import load_profile_file, shipped_profile_files
from dsv4setup.profiles.model import ModelSpec, Profile, ToolkitSpec
from dsv4setup.toolkit.nvcc import HostTools, compile_probe, nvcc_release
from dsv4setup.toolkit.step import ToolkitStep
from tests.core.steps_for_tests import StandInStep
from tests.gpu.conftest import live_nvml
from tests.preflight.conftest import hardware_validator
from tests.preflight.consistency import verdict_problems

pytestmark = pytest.mark.gpu
GPU_FIELDS = ("name", "uuid", "pci_bus_id", "memory_total_bytes", "compute_capability", "power_limit_default_w",
              "power_limit_max_w", "numa_node")
PCIE_FIELDS = ("gen_max", "width_max", "gen_current", "width_current")
FIXTURE_DIR_ENV = "DSV4SETUP_REAL_FIXTURE_DIR"  # scripts/gpu-check: where to save the scrubbed snapshot
TORCH_PROBE = """import json, torch
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
x = torch.arange(1024, device="cuda", dtype=torch.float32) * 2 if n else None
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "available": torch.cuda.is_available(),
                  "count": n, "cc": [list(torch.cuda.get_device_capability(i)) for i in range(n)],
                  "sum": float(x.sum().item()) if n else None}))
"""


def sysfs_numa(bus_id: str | None) -> int | None:
    """The kernel's NUMA node for a PCI device (-1: the platform has no NUMA affinity for it)."""
    if not bus_id:
        return None
    domain, rest = bus_id.lower().split(":", 1)
    path = Path(f"/sys/bus/pci/devices/{int(domain, 16):04x}:{rest}/numa_node")
    return int(path.read_text()) if path.is_file() else None


def unexplained_nulls(doc: dict[str, Any]) -> list[str]:
    """Every null NVML field must come with the probe note that says why (or, for NUMA, the kernel's -1)."""
    notes = doc.get("probe_notes", [])

    def explained(tag: str) -> bool:
        return any(note.startswith(f"{tag}:") for note in notes)

    missing = [f"driver.{k}" for k, v in (doc["driver"] or {}).items() if v is None and not explained(f"driver.{k}")]
    for gpu in doc["gpus"]:
        tag = f"gpu{gpu['index']}"
        for field in GPU_FIELDS:
            if gpu[field] is None and not explained(f"{tag}.{field}") and \
                    not (field == "numa_node" and sysfs_numa(gpu["pci_bus_id"]) == -1):
                missing.append(f"{tag}.{field}")
        missing += [f"{tag}.pcie.{f}" for f in PCIE_FIELDS
                    if gpu["pcie"][f] is None and not explained(f"{tag}.pcie.{f}")]
    for link in doc["links"]:
        tag = f"link{link['a']}-{link['b']}"
        if link["pcie_topology"] == "unknown" and not explained(f"{tag}.topology"):
            missing.append(f"{tag}.topology")
        missing += [f"{tag}.{k}" for k in ("p2p_read", "p2p_write", "p2p_nvlink")
                    if link[k] == "unknown" and not explained(f"{tag}.{k}")]
    return missing


def fixture_name(doc: dict[str, Any]) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", (doc["gpus"][0]["name"] or "gpu").lower().removeprefix("nvidia ")).strip("-")
    return f"real-{name}-x{len(doc['gpus'])}.json"


def test_live_nvml_snapshot_is_valid_and_every_null_is_explained(tmp_path: Path) -> None:
    doc = take_snapshot(Workdir(tmp_path / "wd").ensure())
    assert doc.get("nvml_error") is None and doc["driver"] is not None
    count = len(live_nvml().gpus)
    assert len(doc["gpus"]) == count and len(doc["links"]) == count * (count - 1) // 2  # no pairs for one GPU
    assert snapshot_errors(doc) == [] and list(hardware_validator().iter_errors(doc)) == []
    assert unexplained_nulls(doc) == [], doc.get("probe_notes")
    if target := os.environ.get(FIXTURE_DIR_ENV):
        scrubbed = scrub_snapshot(doc)
        scrubbed["fixture_note"] = ("captured by scripts/gpu-check through the real NVML; host name, GPU UUIDs, "
                                    "serials and user names scrubbed")
        assert snapshot_errors(scrubbed) == []
        save_snapshot(Path(target) / fixture_name(doc), scrubbed)


def test_live_doctor_verdict_is_consistent_with_the_hardware(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dsv4setup", "doctor", "--json", "--workdir", str(tmp_path / "wd")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    assert (proc.returncode == 0) == doc["ok"]
    assert len(doc["snapshot"]["gpus"]) == len(live_nvml().gpus)
    assert verdict_problems(doc["snapshot"], doc) == [], doc["checks"]


def _profile(version: str) -> Profile:
    return Profile(name="gpu-live", description="toolkit next to an existing CUDA", source="tests",
                   model=ModelSpec(local_path="/nonexistent"), toolkit=ToolkitSpec(version=version))


def test_live_toolkit_step_uses_the_existing_cuda_and_runs_its_probe_kernel_on_the_gpu(tmp_path: Path) -> None:
    host = HostTools.from_environ()
    found = host.nvcc_candidates()
    if not found:
        pytest.skip("no CUDA toolkit on this GPU machine (no nvcc on PATH, in CUDA_HOME/CUDA_PATH or "
                    "/usr/local/cuda): nothing to detect")
    nvcc, gpus = found[0], live_nvml().gpus
    release = nvcc_release(nvcc)
    arch = arch_from_capability(gpus[0]["compute_capability"])
    assert release is not None, f"{nvcc} --version gives no release"
    if not compile_probe(nvcc, arch).ok:
        pytest.skip(f"the machine's nvcc {release} at {nvcc} cannot compile for {arch}: the step would install one")
    preflight = PreflightOutputs(snapshot=str(tmp_path / "hardware.json"), report=str(tmp_path / "doctor.json"),
                                 recommendation=None, findings={}, warnings=[], toolkit_arch=arch)
    steps = [StandInStep(preflight), ToolkitStep(host)]
    workdir = Workdir(tmp_path / "wd").ensure()
    profile = _profile(f"{release[0]}.{release[1]}.0")
    result = Runbook(steps, workdir, profile).up(Selection())
    assert result.ok, result.error
    out = load_state(workdir.state_file).steps["toolkit"].outputs
    assert out["route"] == "system" and out["nvcc"] == str(nvcc) and out["arch"] == arch
    assert not (workdir.toolkit_dir / "venv").exists() and not (workdir.toolkit_dir / "conda").exists()
    assert "ran on the GPU and wrote the expected values" in workdir.log_file("toolkit").read_text()
    again = Runbook(steps, workdir, profile).up(Selection())
    assert again.ok and again.decisions[-1].action == "skip"
    assert "its probe kernel ran on the GPU" in again.decisions[-1].reason


def torch_facts(python: str) -> dict[str, Any]:
    proc = subprocess.run([python, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_torch_sees_the_gpus(facts: dict[str, Any]) -> None:
    gpus = live_nvml().gpus
    assert facts["available"] and facts["count"] == len(gpus), facts
    assert facts["cc"] == [g["compute_capability"] for g in gpus]
    assert facts["sum"] == float(sum(range(1024)) * 2)  # a kernel really ran
    driver_cuda = parse_release(str(live_nvml().driver["cuda_driver"]))  # type: ignore[index]
    assert parse_release(facts["cuda"]) <= driver_cuda, f"torch CUDA {facts['cuda']} > driver's {driver_cuda}"


def test_live_torch_in_the_serving_venv_sees_the_gpu_with_the_profiles_cuda() -> None:
    python = os.environ.get("DSV4SETUP_SERVING_PYTHON")
    if python is None and os.environ.get("DSV4SETUP_WORKDIR"):
        python = str(Workdir(Path(os.environ["DSV4SETUP_WORKDIR"])).venv_python)
    if python is None or not Path(python).exists():
        pytest.skip("no serving venv: set DSV4SETUP_WORKDIR to a workdir where `dsv4setup up` ran the vllm step "
                    "(or DSV4SETUP_SERVING_PYTHON)")
    facts = torch_facts(python)
    assert_torch_sees_the_gpus(facts)
    wanted = {parse_release(str(p.toolkit.version))[0]
              for p in map(load_profile_file, shipped_profile_files()) if p.toolkit.version and not p.match.cpu_only}
    assert parse_release(facts["cuda"])[0] in wanted, f"torch {facts['torch']} is CUDA {facts['cuda']}"


def test_live_torch_of_the_host_python_sees_the_gpu() -> None:
    """The lent machine's base Python ships torch: it must see the same GPUs NVML does."""
    pytest.importorskip("torch", reason="the Python running the tests has no torch")
    assert_torch_sees_the_gpus(torch_facts(sys.executable))
