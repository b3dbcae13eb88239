"""The pip route for real: NVIDIA's cuda-toolkit wheels into a venv (through uv), then nvcc
compiles for sm_120a and sm_90a (no GPU needed). Downloads are cached under the test cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection
from dsv4setup.preflight.outputs import PreflightOutputs
from dsv4setup.profiles.model import ModelSpec, Profile, ToolkitSpec
from dsv4setup.toolkit.nvcc import HostTools, compile_probe, nvcc_release
from dsv4setup.toolkit.step import ToolkitStep
from tests.core.steps_for_tests import StandInStep

pytestmark = pytest.mark.slow
NOWHERE = HostTools(path="", nvcc_dirs=())  # no conda, no system nvcc: whatever this machine has


def make_profile(arch: str, route: str = "auto") -> Profile:
    return Profile(name="tk-real", description="real pip toolkit", source="tests",
                   model=ModelSpec(local_path="/nonexistent"),
                   toolkit=ToolkitSpec(version="13.0.2", route=route, arch=arch))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pip_cache(test_cache: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_CACHE_DIR", str(test_cache / "pip"))
        mp.setenv("UV_CACHE_DIR", str(test_cache / "uv"))
        yield


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, pip_cache: None) -> Workdir:
    """One real pip install (automatic route, nothing else on the search path) for sm_120a."""
    workdir = Workdir(tmp_path_factory.mktemp("tk") / "wd").ensure()
    result = Runbook([ToolkitStep(NOWHERE)], workdir, make_profile("sm_120a")).up(Selection())
    assert result.ok, result.error
    return workdir


def outputs(workdir: Workdir) -> dict[str, str]:
    return load_state(workdir.state_file).steps["toolkit"].outputs


def test_pip_route_installs_nvcc_that_compiles_for_sm_120a_and_sm_90a(installed: Workdir) -> None:
    out = outputs(installed)
    nvcc = Path(out["nvcc"])
    assert out["route"] == "pip" and out["version"] == "13.0.2" and out["release"] == "13.0"
    assert nvcc.is_relative_to(installed.toolkit_dir / "venv") and nvcc.parent.name == "bin"
    assert Path(out["cuda_home"]) == nvcc.resolve().parents[1]
    assert (Path(out["cuda_home"]) / "include" / "cuda_runtime.h").is_file()
    assert nvcc_release(nvcc) == (13, 0)
    assert " pip install --python " in installed.log_file("toolkit").read_text()  # uv's, not pip's
    for arch in ("sm_120a", "sm_90a"):
        assert compile_probe(nvcc, arch).ok, arch
    # through the step: a new arch re-runs it, the existing install is reused and verified
    result = Runbook([ToolkitStep(NOWHERE)], installed, make_profile("sm_90a")).up(Selection())
    assert result.ok and result.decisions[0].reason == "inputs changed: arch"
    assert outputs(installed)["arch"] == "sm_90a" and outputs(installed)["nvcc"] == str(nvcc)
    again = Runbook([ToolkitStep(NOWHERE)], installed, make_profile("sm_90a")).up(Selection())
    assert again.decisions[0].action == "skip" and "compiles for sm_90a" in again.decisions[0].reason


def test_real_nvcc_13_refuses_an_arch_it_dropped(installed: Workdir) -> None:
    result = Runbook([ToolkitStep(NOWHERE)], installed, make_profile("sm_70", route="pip")).up(Selection())
    assert not result.ok and result.error is not None
    assert "cannot compile for sm_70" in result.error.message
    assert "Unsupported gpu architecture 'sm_70'" in result.error.message
    assert "sm_70 was dropped after CUDA 12.9" in (result.error.fix or "")


def test_real_existing_nvcc_is_used_unless_a_route_is_forced(installed: Workdir, tmp_path: Path) -> None:
    nvcc = Path(outputs(installed)["nvcc"])
    host = HostTools(path=str(nvcc.parent), nvcc_dirs=())  # the installed toolkit plays the system's nvcc
    fresh = Workdir(tmp_path / "wd").ensure()
    result = Runbook([ToolkitStep(host)], fresh, make_profile("sm_120a")).up(Selection())
    assert result.ok, result.error
    out = outputs(fresh)
    assert out["route"] == "system" and out["nvcc"] == str(nvcc) and out["version"] == "13.0"
    assert not (fresh.toolkit_dir / "venv").exists()


def test_real_nvcc_builds_and_runs_the_gpu_probe_when_preflight_saw_a_gpu_of_the_arch(installed: Workdir,
                                                                                       tmp_path: Path) -> None:
    """Preflight (a stand-in here) reports an sm_120a GPU: the step must also run the probe kernel.

    The program is really compiled, linked (cudart from the wheel's lib/) and executed; on this
    GPU-less machine CUDA reports the missing driver, so the step fails and says so. On a GPU
    machine tests/gpu proves the pass.
    """
    nvcc = Path(outputs(installed)["nvcc"])
    fresh = Workdir(tmp_path / "wd").ensure()
    preflight = StandInStep(PreflightOutputs(snapshot="/w/hardware.json", report="/w/doctor.json", recommendation=None,
                                             findings={}, warnings=[], toolkit_arch="sm_120a"))
    result = Runbook([preflight, ToolkitStep(HostTools(path=str(nvcc.parent)))], fresh,
                     make_profile("sm_120a")).up(Selection())
    assert not result.ok and result.error is not None
    assert ("compiles for sm_120a, but its probe kernel did not run on the GPU: the probe program (exit 2): "
            "CUDA error:") in result.error.message
    assert "nvidia-smi" in (result.error.fix or "")
    assert "the probe program (exit 2): CUDA error:" in fresh.log_file("toolkit").read_text()  # linked and ran
