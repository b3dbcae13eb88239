"""What the patches step records (validated by the engine before saving)."""

from __future__ import annotations

from pydantic import Field

from dsv4setup.core.outputs import StepOutputs


class PatchesOutputs(StepOutputs):
    step = "patches"

    target: str
    vllm_version: str | None
    applied: list[str]
    upstream: list[str]
    changed: list[str]
    backup_dir: str
    # per applied patch, the sha256 of the one diff in effect for this vLLM version (records of the first
    # release have none: empty)
    diff_sha256: dict[str, str | None] = Field(default_factory=dict)
