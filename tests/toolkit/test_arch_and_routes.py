"""Pure judgements of the toolkit package: arch names, release support, route choice, commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4setup.core.errors import UsageError
from dsv4setup.hardware.arch import (
    arch_from_capability,
    arch_table,
    arches_from_preflight,
    parse_release,
    support_fix,
    torch_arch_list,
)
from dsv4setup.toolkit.install import choose_route, conda_create_argv, pip_requirement, requested_route
from dsv4setup.toolkit.nvcc import HostTools, parse_nvcc_release


@pytest.mark.parametrize(("cc", "arch", "torch"), [
    ("12.0", "sm_120a", "12.0a"), ("12.1", "sm_121a", "12.1a"), ((9, 0), "sm_90a", "9.0a"),
    ([10, 0], "sm_100a", "10.0a"), ({"major": 10, "minor": 3}, "sm_103a", "10.3a"), ("8.6", "sm_86", "8.6"),
    (12.1, "sm_121a", "12.1a"),
])
def test_capability_to_nvcc_arch_to_torch_arch_list(cc: object, arch: str, torch: str) -> None:
    assert arch_from_capability(cc) == arch
    assert torch_arch_list(arch) == torch


@pytest.mark.parametrize("bad", ["12", "twelve", (12,), 12, None, True])
def test_bad_capability_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="not a compute capability"):
        arch_from_capability(bad)


def test_releases_parse() -> None:
    assert parse_release("13.0.2") == (13, 0) and parse_release("12.9") == (12, 9)
    with pytest.raises(ValueError):
        parse_release("13")
    text = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.88\n"
    assert parse_nvcc_release(text) == (13, 0)
    assert parse_nvcc_release("command not found") is None


@pytest.mark.parametrize(("outputs", "arches"), [
    ({"toolkit_arch": "sm_120a", "gpus": [{"compute_capability": "9.0"}]}, ["sm_120a"]),
    ({"gpus": [{"compute_capability": "12.0"}, {"compute_capability": "12.0"}]}, ["sm_120a"]),
    ({"snapshot": {"gpus": [{"cc": [9, 0]}]}}, ["sm_90a"]),
    ({"gpus": [{"compute_capability": "12.0"}, {"compute_capability": "9.0"}]}, ["sm_120a", "sm_90a"]),
    ({"gpus": [{"compute_capability": "unknown"}]}, []),
    ({"arch": "x86_64", "gpus": []}, []),
    ({}, []),
])
def test_arches_from_preflight_reads_any_layout(outputs: dict[str, object], arches: list[str]) -> None:
    assert arches_from_preflight(outputs) == arches


def test_support_hints_name_the_needed_release() -> None:
    assert "sm_121a needs CUDA >= 12.9 but this nvcc is 12.8" in support_fix("sm_121a", (12, 8))
    assert "sm_120a needs CUDA >= 12.8 but this nvcc is 12.6" in support_fix("sm_120a", (12, 6))
    assert "dropped after CUDA 12.9" in support_fix("sm_70", (13, 0))
    assert "not a known nvcc target" in support_fix("sm_999a", (13, 0))
    assert "should support sm_90a" in support_fix("sm_90a", (13, 0))


def test_arch_table_is_consistent() -> None:
    table = arch_table()
    assert {"sm_90a", "sm_100a", "sm_103a", "sm_120a", "sm_121a"} <= set(table)
    assert all(s.max_cuda is None or s.max_cuda >= s.min_cuda for s in table.values())


def test_route_choice() -> None:
    conda = Path("/opt/conda/bin/conda")
    assert choose_route(None, conda) == "conda"
    assert choose_route(None, None) == "pip"
    assert choose_route("pip", conda) == "pip"
    assert requested_route(None, "auto") is None
    assert requested_route(None, "conda") == "conda"
    assert requested_route("pip", "conda") == "pip"  # the --toolkit option wins over the profile
    with pytest.raises(UsageError):
        requested_route("apt", "auto")


def test_install_commands_pin_one_release() -> None:
    argv = conda_create_argv(Path("/c/mamba"), Path("/w/toolkit/conda"), "12.9.1")
    assert argv == ["/c/mamba", "create", "-y", "-p", "/w/toolkit/conda", "-c", "nvidia/label/cuda-12.9.1",
                    "cuda-toolkit=12.9.1", "cuda-version=12.9"]
    assert pip_requirement("13.0.2") == "cuda-toolkit[nvcc,nvvm,cudart,crt,cccl]==13.0.2"


def test_host_tools_search_only_where_told(tmp_path: Path) -> None:
    empty = HostTools(path="", nvcc_dirs=())
    assert empty.nvcc_candidates() == [] and empty.which("conda") is None
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    linked = tmp_path / "bin"
    linked.mkdir()
    (linked / "nvcc").symlink_to(nvcc)
    both = HostTools(path=str(tmp_path), nvcc_dirs=(linked,))
    assert both.nvcc_candidates() == [nvcc]  # the same file twice is probed once
