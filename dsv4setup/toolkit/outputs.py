"""What the toolkit step records for later steps (validated by the engine before saving)."""

from __future__ import annotations

from dsv4setup.core.outputs import StepOutputs


class ToolkitOutputs(StepOutputs):
    step = "toolkit"

    cuda_home: str
    nvcc: str
    version: str
    release: str
    route: str
    arch: str  # the nvcc target a test kernel was compiled for (read by a vLLM source build)
