"""What the vllm step records for later steps (validated by the engine before saving)."""

from __future__ import annotations

from dsv4setup.core.outputs import StepOutputs


class VllmOutputs(StepOutputs):
    step = "vllm"

    python: str
    venv: str
    site_packages: str  # read by the patches step
    package: str
    version: str  # read by the checkpoint lint
    vllm_dir: str
    route: str
    git_commit: str | None
