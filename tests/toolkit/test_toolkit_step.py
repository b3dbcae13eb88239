"""The toolkit step through the engine: route choice, existing nvcc, conda command, failures.

No conda channel and no GPU toolchain can be reached from CI, so conda and the nvcc it would
install are recording fakes here (see fakes.py; the test names say so). The pip route and a
real nvcc run for real in test_toolkit_pip_real.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dsv4setup.core.state import StepStatus, load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection, Step
from dsv4setup.preflight.outputs import PreflightOutputs
from dsv4setup.profiles.model import ModelSpec, Profile, ToolkitSpec
from dsv4setup.toolkit.nvcc import HostTools
from dsv4setup.toolkit.step import ToolkitStep
from tests.core.steps_for_tests import StandInStep
from tests.toolkit.condachannel import build_channel
from tests.toolkit.fakes import calls, fake_nvcc_text, write_fake_nvcc, write_recording_fake_conda


def make_profile(**toolkit: Any) -> Profile:
    spec = {"version": "13.0.2", "route": "auto", "arch": "sm_120a", **toolkit}
    return Profile(name="tk-test", description="toolkit test", source="tests",
                   model=ModelSpec(local_path="/nonexistent"), toolkit=ToolkitSpec(**spec))


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    return path


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "calls.jsonl"


def judged(toolkit_arch: str | None) -> PreflightOutputs:
    """The preflight step's outputs on a machine whose GPUs are `toolkit_arch` (None: no GPU found)."""
    return PreflightOutputs(snapshot="/w/run/hardware.json", report="/w/run/doctor.json", recommendation={},
                            findings={}, warnings=[], toolkit_arch=toolkit_arch)


def up(workdir: Workdir, profile: Profile, host: HostTools, options: dict[str, Any] | None = None,
       preflight: PreflightOutputs | None = None) -> Any:
    steps: list[Step] = [StandInStep(preflight)] if preflight is not None else []
    return Runbook([*steps, ToolkitStep(host)], workdir, profile, options).up(Selection())


def outputs(workdir: Workdir) -> dict[str, Any]:
    return load_state(workdir.state_file).steps["toolkit"].outputs


def test_conda_route_with_recording_fake_conda(workdir: Workdir, bin_dir: Path, record: Path) -> None:
    write_recording_fake_conda(bin_dir, record)
    host = HostTools(path=str(bin_dir), nvcc_dirs=())
    result = up(workdir, make_profile(), host)
    assert result.ok, result.error
    prefix = workdir.toolkit_dir / "conda"
    assert calls(record) == [["conda", "create", "-y", "-p", str(prefix), "-c", "nvidia/label/cuda-13.0.2",
                              "cuda-toolkit=13.0.2", "cuda-version=13.0"]]
    out = outputs(workdir)
    assert out["route"] == "conda" and out["arch"] == "sm_120a" and out["version"] == "13.0.2"
    assert out["nvcc"] == str(prefix / "bin" / "nvcc") and out["cuda_home"] == str(prefix.resolve())
    again = up(workdir, make_profile(), host)
    assert again.ok and again.decisions[0].action == "skip" and "compiles for sm_120a" in again.decisions[0].reason
    assert len(calls(record)) == 1


def test_conda_forge_channel_with_recording_fake_micromamba(workdir: Workdir, bin_dir: Path, record: Path) -> None:
    write_recording_fake_conda(bin_dir, record, name="micromamba")
    result = up(workdir, make_profile(), HostTools(path=str(bin_dir)), {"toolkit_conda_channel": "conda-forge"})
    assert result.ok, result.error
    assert calls(record) == [["micromamba", "create", "-y", "-p", str(workdir.toolkit_dir / "conda"),
                              "--override-channels", "-c", "conda-forge", "cuda-nvcc", "cuda-cudart-dev",
                              "cuda-version=13.0"]]
    assert outputs(workdir)["route"] == "conda"


def test_existing_suitable_nvcc_is_used_with_fake_system_nvcc(workdir: Workdir, bin_dir: Path, record: Path,
                                                              tmp_path: Path) -> None:
    write_recording_fake_conda(bin_dir, record)
    system = write_fake_nvcc(tmp_path / "cuda" / "bin" / "nvcc", release="13.1")
    result = up(workdir, make_profile(), HostTools(path=str(bin_dir), nvcc_dirs=(system.parent,)))
    assert result.ok, result.error
    assert calls(record) == []  # nothing installed
    out = outputs(workdir)
    assert out["route"] == "system" and out["nvcc"] == str(system) and out["version"] == "13.1"
    assert out["cuda_home"] == str((tmp_path / "cuda").resolve())


@pytest.mark.parametrize("release", ["12.9", "14.0"])
def test_system_nvcc_of_another_release_is_not_used_with_fake_nvcc(workdir: Workdir, bin_dir: Path, record: Path,
                                                                   tmp_path: Path, release: str) -> None:
    write_recording_fake_conda(bin_dir, record)
    write_fake_nvcc(bin_dir / "nvcc", release=release)
    result = up(workdir, make_profile(), HostTools(path=str(bin_dir)))
    assert result.ok, result.error
    assert len(calls(record)) == 1 and outputs(workdir)["route"] == "conda"
    assert f"not using {bin_dir / 'nvcc'}: release {release}, wanted 13.x >= 13.0" in \
        workdir.log_file("toolkit").read_text()


def test_system_nvcc_without_the_arch_is_not_used_with_fake_nvcc(workdir: Workdir, bin_dir: Path,
                                                                 record: Path) -> None:
    write_recording_fake_conda(bin_dir, record)
    write_fake_nvcc(bin_dir / "nvcc", release="13.0", arches=("sm_90a",))
    assert up(workdir, make_profile(), HostTools(path=str(bin_dir))).ok
    assert [c[0] for c in calls(record)] == ["conda"]
    assert (f"not using {bin_dir / 'nvcc'}: cannot compile for sm_120a: nvcc fatal   : Unsupported gpu "
            f"architecture 'sm_120a'") in workdir.log_file("toolkit").read_text()


def test_forced_route_installs_even_with_a_suitable_system_nvcc_with_recording_fake_conda(
        workdir: Workdir, bin_dir: Path, record: Path) -> None:
    write_recording_fake_conda(bin_dir, record)
    write_fake_nvcc(bin_dir / "nvcc", release="13.0")
    host = HostTools(path=str(bin_dir))
    result = up(workdir, make_profile(route="conda"), host)
    assert result.ok, result.error
    assert len(calls(record)) == 1 and outputs(workdir)["route"] == "conda"
    # the --toolkit option forces it too, over an automatic profile
    other = Workdir(workdir.root.parent / "wd2").ensure()
    assert up(other, make_profile(), host, {"toolkit_route": "conda"}).ok
    assert len(calls(record)) == 2


def test_forced_conda_without_conda_binary_goes_to_real_rattler_empty_local_standin_channel_fails_with_hint(
        workdir: Workdir, bin_dir: Path, tmp_path: Path) -> None:
    empty = build_channel(tmp_path / "empty-channel", [])
    result = up(workdir, make_profile(route="conda"), HostTools(path=str(bin_dir)),
                {"toolkit_conda_channel": str(empty)})
    assert not result.ok and result.error is not None
    assert f"py-rattler could not install CUDA 13.0.2 from {empty}" in result.error.message
    assert "cuda-nvcc" in result.error.message  # rattler's own words: nothing provides it
    assert "--toolkit pip" in (result.error.fix or "")


def test_no_nvcc_after_install_with_recording_fake_conda(workdir: Workdir, bin_dir: Path, record: Path) -> None:
    write_recording_fake_conda(bin_dir, record, nvcc="")
    result = up(workdir, make_profile(), HostTools(path=str(bin_dir)))
    assert not result.ok and result.error is not None
    assert result.error.message.startswith("no nvcc found after the conda install of CUDA 13.0.2")
    assert "--toolkit pip" in (result.error.fix or "")
    assert load_state(workdir.state_file).steps["toolkit"].status == StepStatus.FAILED


def test_toolkit_too_old_for_arch_names_the_needed_version_with_fake_conda_nvcc(
        workdir: Workdir, bin_dir: Path, record: Path) -> None:
    old = fake_nvcc_text(release="12.8", arches=("sm_120a", "sm_100a", "sm_90a"))
    write_recording_fake_conda(bin_dir, record, nvcc=old)
    result = up(workdir, make_profile(version="12.8.1", arch="sm_121a"), HostTools(path=str(bin_dir)))
    assert not result.ok and result.error is not None
    assert "cannot compile for sm_121a" in result.error.message
    assert "Unsupported gpu architecture 'sm_121a'" in result.error.message
    assert result.error.fix is not None and "sm_121a needs CUDA >= 12.9 but this nvcc is 12.8" in result.error.fix


def test_arch_comes_from_preflight_outputs_with_recording_fake_conda(workdir: Workdir, bin_dir: Path,
                                                                     record: Path) -> None:
    write_recording_fake_conda(bin_dir, record)
    result = up(workdir, make_profile(arch=None), HostTools(path=str(bin_dir)), preflight=judged("sm_121a"))
    assert result.ok, result.error
    assert outputs(workdir)["arch"] == "sm_121a"


def test_no_arch_anywhere_fails_with_hint(workdir: Workdir, bin_dir: Path, record: Path) -> None:
    write_recording_fake_conda(bin_dir, record)
    result = up(workdir, make_profile(arch=None), HostTools(path=str(bin_dir)), preflight=judged(None))
    assert not result.ok and result.error is not None
    assert "no target GPU architecture" in result.error.message
    assert "--set toolkit.arch=sm_120a" in (result.error.fix or "")
    assert calls(record) == []


def test_not_applicable_without_toolkit_version(workdir: Workdir, bin_dir: Path, record: Path) -> None:
    write_recording_fake_conda(bin_dir, record)
    result = up(workdir, make_profile(version=None), HostTools(path=str(bin_dir)))
    assert result.ok
    state = load_state(workdir.state_file)
    assert state.steps["toolkit"].status == StepStatus.SKIPPED and calls(record) == []


def test_removed_toolkit_is_drift_and_reinstalled_with_recording_fake_conda(workdir: Workdir, bin_dir: Path,
                                                                            record: Path) -> None:
    write_recording_fake_conda(bin_dir, record)
    host = HostTools(path=str(bin_dir))
    assert up(workdir, make_profile(), host).ok
    (workdir.toolkit_dir / "conda" / "bin" / "nvcc").unlink()
    plan = Runbook([ToolkitStep(host)], workdir, make_profile()).plan(Selection())
    assert plan[0].action == "run" and plan[0].reason.startswith("drift: no nvcc of CUDA 13.0.2")
    assert up(workdir, make_profile(), host).ok
    assert len(calls(record)) == 2


def test_changed_version_reruns_with_recording_fake_conda(workdir: Workdir, bin_dir: Path, record: Path) -> None:
    write_recording_fake_conda(bin_dir, record)
    host = HostTools(path=str(bin_dir))
    assert up(workdir, make_profile(), host).ok
    result = up(workdir, make_profile(version="13.0.1"), host)
    assert result.ok and result.decisions[0].reason == "inputs changed: version"
    assert calls(record)[-1][-2:] == ["cuda-toolkit=13.0.1", "cuda-version=13.0"]


def test_nvcc_proof_is_kept_per_binary_and_a_changed_nvcc_is_compiled_with_again_with_fake_nvcc(
        workdir: Workdir, bin_dir: Path, record: Path, tmp_path: Path) -> None:
    nvcc_calls = tmp_path / "nvcc-calls.jsonl"
    system = write_fake_nvcc(tmp_path / "cuda" / "bin" / "nvcc", release="13.1", record=nvcc_calls)
    host = HostTools(path=str(bin_dir), nvcc_dirs=(system.parent,))
    assert up(workdir, make_profile(), host).ok

    def compiles() -> int:
        return sum(1 for call in calls(nvcc_calls) if "-arch=sm_120a" in call)

    assert compiles() == 1
    again = up(workdir, make_profile(), host)
    assert again.decisions[0].action == "skip" and compiles() == 1  # proven by the nvcc's sha256, not compiled
    # another nvcc binary at the same path (here: one that lost sm_120a) is compiled with again, and fails
    write_fake_nvcc(system, release="13.1", arches=("sm_90a",), record=nvcc_calls)
    plan = Runbook([ToolkitStep(host)], workdir, make_profile()).plan(Selection())
    assert plan[0].action == "run" and plan[0].reason.startswith("drift: no nvcc of CUDA 13.0.2") and compiles() == 2
