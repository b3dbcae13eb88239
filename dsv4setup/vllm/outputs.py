"""What the vllm step records for later steps (validated by the engine before saving)."""

from __future__ import annotations

from typing import Any

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
    installer: dict[str, Any]  # uv or pip, why, the torch backend, the pip settings carried over to uv or not
    torch: str | None  # the torch build installed (from the freeze file), e.g. 2.14.0+cu130
    freeze_file: str  # the resolved versions, checked by the postcondition
