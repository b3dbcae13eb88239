"""The conda route without a conda binary, for real: py-rattler solves and links conda packages
into `<workdir>/toolkit/conda`, and the nvcc it installed compiles for sm_120a.

What is real: the installer (py-rattler), the package format (.tar.bz2 archives with
info/index.json and info/paths.json, indexed into repodata.json by rattler's indexer), and nvcc
(NVIDIA's own files, taken from the pip cuda-toolkit 13.0.2 wheels and repackaged as
cuda-nvcc / cuda-cudart-dev / cuda-version the way conda-forge splits them).
What is a stand-in: the channel, a local directory built by the test instead of conda-forge
(no conda channel is reachable from CI). The built channel is kept in the test cache.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsv4setup.core.proc import StepLog
from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection
from dsv4setup.profiles.model import ModelSpec, Profile, ToolkitSpec
from dsv4setup.toolkit.install import ToolkitLayout, install_pip
from dsv4setup.toolkit.nvcc import HostTools, compile_probe, nvcc_release
from dsv4setup.toolkit.rattler_install import install_rattler
from dsv4setup.toolkit.step import ToolkitStep
from dsv4setup.vllm.installer import Installer, base_python
from tests.toolkit.condachannel import Package, build_channel, tree_files

pytestmark = pytest.mark.slow
VERSION = "13.0.2"
NO_CONDA = HostTools(path="", nvcc_dirs=())  # no conda, mamba, micromamba or nvcc on the search path


def make_profile() -> Profile:
    return Profile(name="tk-rattler", description="conda route via py-rattler", source="tests",
                   model=ModelSpec(local_path="/nonexistent"),
                   toolkit=ToolkitSpec(version=VERSION, route="conda", arch="sm_120a"))


@pytest.fixture(scope="module")
def local_channel(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local channel holding NVIDIA's nvcc 13.0 as conda packages, built once per test cache."""
    channel = test_cache / f"conda-channel-cuda-{VERSION}"
    if not (channel / "linux-64" / "repodata.json").is_file():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PIP_CACHE_DIR", str(test_cache / "pip"))
            layout = ToolkitLayout(tmp_path_factory.mktemp("pip-toolkit"))
            install_pip(layout, VERSION, StepLog(layout.root / "pip.log"), Installer.choose("uv", base_python(None)))
        nvcc = layout.pip_nvcc()
        assert nvcc is not None
        home = nvcc.parents[1]  # site-packages/nvidia/cu13: bin, include, lib, nvvm
        component = next(home.parents[1].glob("nvidia_cuda_nvcc-*.dist-info")).name.split("-")[1]
        pin = "cuda-version >=13.0,<13.1"
        building = test_cache / f"conda-channel-cuda-{VERSION}.{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        build_channel(building, [
            Package("cuda-version", "13.0"),
            Package("cuda-nvcc", component, {**tree_files(home / "bin", "bin/"), **tree_files(home / "nvvm", "nvvm/")},
                    (pin,)),
            Package("cuda-cudart-dev", component,
                    {**tree_files(home / "include", "include/"), **tree_files(home / "lib", "lib/")}, (pin,)),
        ])
        shutil.rmtree(channel, ignore_errors=True)
        building.replace(channel)
    yield channel


def outputs(workdir: Workdir) -> dict[str, str]:
    return load_state(workdir.state_file).steps["toolkit"].outputs


def prefix_state(prefix: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file in the prefix: a no-op leaves all of them untouched."""
    return {str(p.relative_to(prefix)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in prefix.rglob("*") if p.is_file()}


def test_real_rattler_installs_real_nvcc_from_local_standin_channel_and_compiles_sm_120a(
        local_channel: Path, workdir: Workdir) -> None:
    options = {"toolkit_conda_channel": str(local_channel)}
    result = Runbook([ToolkitStep(NO_CONDA)], workdir, make_profile(), options).up(Selection())
    assert result.ok, result.error
    prefix = workdir.toolkit_dir / "conda"
    out = outputs(workdir)
    assert out["route"] == "conda" and out["nvcc"] == str(prefix / "bin" / "nvcc")
    assert out["cuda_home"] == str(prefix.resolve()) and out["release"] == "13.0"
    records = sorted(p.name for p in (prefix / "conda-meta").glob("*.json"))
    assert [r.split("-13.0")[0] for r in records] == ["cuda-cudart-dev", "cuda-nvcc", "cuda-version"]
    log = workdir.log_file("toolkit").read_text()
    assert "py-rattler: solving cuda-nvcc cuda-cudart-dev cuda-version=13.0" in log
    nvcc = prefix / "bin" / "nvcc"
    assert nvcc_release(nvcc) == (13, 0)
    compiled = compile_probe(nvcc, "sm_120a")
    assert compiled.ok, compiled.output[-2000:]
    assert compiled.cuda_home == prefix.resolve()  # nvcc ran from the prefix, not from the pip venv

    # a second run is a verified no-op: the step's postcondition (release + compile) holds, and
    # rattler itself, asked again, leaves every file of the prefix untouched
    before = prefix_state(prefix)
    again = Runbook([ToolkitStep(NO_CONDA)], workdir, make_profile(), options).up(Selection())
    assert again.ok and again.decisions[0].action == "skip"
    assert "compiles for sm_120a" in again.decisions[0].reason
    install_rattler(ToolkitLayout(workdir.toolkit_dir), VERSION, str(local_channel),
                    StepLog(workdir.root / "again.log"))
    assert prefix_state(prefix) == before

