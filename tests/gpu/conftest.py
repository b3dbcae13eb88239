"""GPU tests (marker `gpu`): they run only where the real NVML finds a GPU, and skip with NVML's
own reason everywhere else. scripts/gpu-check runs them on a lent GPU machine and writes a report."""

from __future__ import annotations

import functools

import pytest

from dsv4setup.preflight.nvml import NvmlFacts, probe_nvml


@functools.cache
def live_nvml() -> NvmlFacts:
    """The real NVML, probed once per session."""
    return probe_nvml()


def no_gpu_reason() -> str | None:
    facts = live_nvml()
    if facts.nvml_error is not None:
        return f"no NVIDIA GPU here: NVML is unavailable ({facts.nvml_error}); run scripts/gpu-check on a GPU machine"
    if not facts.gpus:
        return "no NVIDIA GPU here: NVML works but reports 0 GPUs (CUDA_VISIBLE_DEVICES? a container without GPUs?)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and (reason := no_gpu_reason()) is not None:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))
