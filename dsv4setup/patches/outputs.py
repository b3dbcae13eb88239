"""What the patches step records (validated by the engine before saving)."""

from __future__ import annotations

from dsv4setup.core.outputs import StepOutputs


class PatchesOutputs(StepOutputs):
    step = "patches"

    target: str
    vllm_version: str | None
    applied: list[str]
    upstream: list[str]
    changed: list[str]
    backup_dir: str
