"""Host facts: the IOMMU parser, sysfs readers, disks, tools and the serving venv, read for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4setup.preflight.host_facts import (
    disk_free_bytes,
    hf_cache_dir,
    nearest_existing,
    nvidia_pci_gpus,
    parse_iommu,
    read_iommu,
    shm_bytes,
    tree_bytes,
)
from dsv4setup.preflight.toolchain import (
    find_nvcc,
    first_version,
    parse_nvcc_version,
    probe_conda,
    probe_nvcc,
    probe_python_env,
    probe_toolchain,
)

CMDLINE = "BOOT_IMAGE=/vmlinuz-6.8.0 root=UUID=1234 ro quiet splash"


@pytest.mark.parametrize(("cmdline", "dirs", "groups", "mode"), [
    (CMDLINE, [], None, "off"),  # no IOMMU unit registered
    (CMDLINE + " intel_iommu=on", ["dmar0", "dmar1"], None, "translated"),  # kernel default: DMA translation
    (CMDLINE + " amd_iommu=on iommu=pt", ["ivhd0"], None, "passthrough"),
    (CMDLINE + " iommu.passthrough=1", ["smmu3.0x0000000016000000"], None, "passthrough"),  # arm64
    (CMDLINE + " iommu.passthrough=0", None, None, "translated"),
    (CMDLINE + " intel_iommu=off", None, None, "off"),
    (CMDLINE + " amd_iommu=off", [], None, "off"),
    (CMDLINE, None, None, "unknown"),  # /sys/class/iommu unreadable (container) and nothing on the cmdline
    (CMDLINE + " intel_iommu=on,sm_on", ["dmar0"], ["identity\n", "identity\n", "DMA\n"], "passthrough"),
    (CMDLINE + " iommu=pt", ["dmar0"], ["DMA-FQ\n", "DMA-FQ\n"], "translated"),  # the groups are the truth
    ("root=/dev/vda -- iommu=pt", None, None, "unknown"),  # after "--" the words belong to init
])
def test_parse_iommu(cmdline: str, dirs: list[str] | None, groups: list[str] | None, mode: str) -> None:
    assert parse_iommu(cmdline, dirs, groups) == mode


def test_read_iommu_from_a_sysfs_tree(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text(CMDLINE + " amd_iommu=on\n")
    (tmp_path / "sys/class/iommu/ivhd0").mkdir(parents=True)
    for i, kind in enumerate(("DMA", "DMA")):
        group = tmp_path / f"sys/kernel/iommu_groups/{i}"
        group.mkdir(parents=True)
        (group / "type").write_text(kind + "\n")
    assert read_iommu(tmp_path) == "translated"
    assert read_iommu(Path("/")) in ("off", "passthrough", "translated", "unknown")  # this machine, for real


def test_nvidia_gpus_on_the_pci_bus(tmp_path: Path) -> None:
    for bdf, vendor, klass in (("0000:01:00.0", "0x10de", "0x030200"), ("0000:02:00.0", "0x10de", "0x030000"),
                               ("0000:01:00.1", "0x10de", "0x040300"), ("0000:03:00.0", "0x8086", "0x030000")):
        (tmp_path / bdf).mkdir()
        (tmp_path / bdf / "vendor").write_text(vendor + "\n")
        (tmp_path / bdf / "class").write_text(klass + "\n")
    assert nvidia_pci_gpus(tmp_path) == 2  # 3D + VGA controller; the HDMI audio function is not a GPU
    assert nvidia_pci_gpus(tmp_path / "absent") is None


def test_disk_free_at_a_workdir_that_does_not_exist_yet(tmp_path: Path) -> None:
    missing = tmp_path / "a" / "b" / "wd"
    assert nearest_existing(missing) == tmp_path
    st = os.statvfs(tmp_path)
    free = disk_free_bytes(missing)
    assert free is not None and abs(free - st.f_bavail * st.f_frsize) < 64 * 2**20


def test_shm_size_of_this_machine() -> None:
    size, free = shm_bytes()
    if Path("/dev/shm").exists():
        st = os.statvfs("/dev/shm")
        assert size == st.f_blocks * st.f_frsize and free is not None and free <= size
    assert shm_bytes(Path("/nonexistent/shm")) == (None, None)


def test_hf_cache_dir_follows_huggingface_hub_precedence() -> None:
    assert hf_cache_dir({"HF_HUB_CACHE": "/x/hub", "HF_HOME": "/y"}) == Path("/x/hub")
    assert hf_cache_dir({"HF_HOME": "/y"}) == Path("/y/hub")
    assert hf_cache_dir({"XDG_CACHE_HOME": "/z"}) == Path("/z/huggingface/hub")
    assert hf_cache_dir({}) == Path.home() / ".cache" / "huggingface" / "hub"


def test_tree_bytes_counts_files_not_symlinks(tmp_path: Path) -> None:
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "a.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "m" / "sub" / "b.json").write_bytes(b"y" * 24)
    (tmp_path / "m" / "link").symlink_to(tmp_path / "m" / "a.safetensors")
    assert tree_bytes(tmp_path / "m") == 1024
    assert tree_bytes(tmp_path / "none") == 0


NVCC_13 = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0
"""


def test_parse_nvcc_version() -> None:
    assert parse_nvcc_version(NVCC_13) == ("13.0", "13.0.88")
    assert parse_nvcc_version("Cuda compilation tools, release 12.8, V12.8.93") == ("12.8", "12.8.93")
    assert parse_nvcc_version("command not found") is None
    assert first_version("git version 2.39.5") == "2.39.5"
    assert first_version("conda 24.11.3") == "24.11.3"
    assert first_version("") is None


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH on this machine")
def test_real_nvcc_on_path_is_found_and_parsed() -> None:
    found = probe_nvcc(dict(os.environ))
    real = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=True).stdout
    assert found is not None and found["path"] == shutil.which("nvcc")
    assert (found["release"], found["version"]) == parse_nvcc_version(real)


def test_nvcc_in_cuda_home_with_fake_nvcc_script(tmp_path: Path) -> None:
    """Off PATH, in $CUDA_HOME/bin: a script printing real nvcc 13.0 output stands in for the binary."""
    bin_dir = tmp_path / "cuda" / "bin"
    bin_dir.mkdir(parents=True)
    nvcc = bin_dir / "nvcc"
    nvcc.write_text("#!/bin/sh\ncat <<'EOF'\n" + NVCC_13 + "EOF\n")
    nvcc.chmod(0o755)
    env = {"PATH": str(tmp_path / "empty"), "CUDA_HOME": str(tmp_path / "cuda")}
    assert find_nvcc(env) == nvcc
    assert probe_nvcc(env) == {"path": str(nvcc), "version": "13.0.88", "release": "13.0"}
    assert probe_nvcc({"PATH": str(tmp_path / "empty")}) is None


def test_conda_found_with_fake_micromamba_script(tmp_path: Path) -> None:
    script = tmp_path / "micromamba"
    script.write_text("#!/bin/sh\necho 2.0.5\n")
    script.chmod(0o755)
    assert probe_conda({"PATH": str(tmp_path)}) == {"kind": "micromamba", "path": str(script), "version": "2.0.5"}
    assert probe_conda({"PATH": str(tmp_path / "none")}) is None


def test_real_gcc_and_git_versions() -> None:
    chain = probe_toolchain(dict(os.environ))
    for tool in ("gcc", "git"):
        if shutil.which(tool):
            assert chain[tool] is not None and chain[tool][0].isdigit()
        else:
            assert chain[tool] is None


def test_python_env_without_a_venv(tmp_path: Path) -> None:
    assert probe_python_env(tmp_path / "venv" / "bin" / "python") == {
        "venv_python": None, "python": None, "vllm": None, "torch": None, "torch_cuda": None}


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3.*")) / "site-packages"


def test_python_env_of_a_real_venv_with_fake_dist_info(tmp_path: Path) -> None:
    """A real venv; vLLM and torch are represented by their metadata and torch/version.py only
    (the probe never imports them), which is all it reads."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    empty = probe_python_env(python)
    assert empty["venv_python"] == str(python) and empty["vllm"] is None and empty["torch"] is None
    assert empty["python"] == ".".join(map(str, sys.version_info[:3]))
    site = _site_packages(venv)
    for dist, version in (("vllm", "0.33.0"), ("torch", "2.14.0+cu130")):
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text("raise ImportError('the probe must not import torch')\n")
    (site / "torch" / "version.py").write_text("__version__ = '2.14.0+cu130'\ncuda: Optional[str] = '13.0'\n")
    facts = probe_python_env(python)
    assert (facts["vllm"], facts["torch"], facts["torch_cuda"]) == ("0.33.0", "2.14.0+cu130", "13.0")


def test_python_env_proof_answers_without_the_interpreter_until_a_read_file_drifts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer is kept in the venv, keyed on the stat of all the probe read: unchanged files
    answer without starting the venv's python; a METADATA or torch/version.py edited in place,
    or a package added, runs the probe again."""
    from dsv4setup.preflight import toolchain

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python, site = venv / "bin" / "python", _site_packages(venv)
    info = site / "vllm-0.33.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.33.0\n")
    (site / "torch").mkdir()
    (site / "torch" / "version.py").write_text("cuda: Optional[str] = '13.0'\n")
    first = probe_python_env(python)
    assert (first["vllm"], first["torch_cuda"]) == ("0.33.0", "13.0")
    assert (venv / toolchain.ENV_PROOF).is_file()
    real_run_tool = toolchain.run_tool
    runs: list[list[str]] = []

    def counting_run_tool(argv: list[str], *args: object, **kwargs: object) -> str | None:
        runs.append(argv)
        return real_run_tool(argv, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(toolchain, "run_tool", counting_run_tool)
    assert probe_python_env(python) == first and runs == []
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.33.1\n")  # same folder name
    assert probe_python_env(python)["vllm"] == "0.33.1" and len(runs) == 1
    (site / "torch" / "version.py").write_text("cuda: Optional[str] = '13.1'\n")
    assert probe_python_env(python)["torch_cuda"] == "13.1" and len(runs) == 2
    torch_info = site / "torch-2.14.0.dist-info"
    torch_info.mkdir()
    (torch_info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.14.0\n")
    assert probe_python_env(python)["torch"] == "2.14.0" and len(runs) == 3
    assert probe_python_env(python)["torch"] == "2.14.0" and len(runs) == 3
