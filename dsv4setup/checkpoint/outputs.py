"""What the checkpoint step records for later steps (validated by the engine before saving)."""

from __future__ import annotations

from typing import Any

from dsv4setup.core.outputs import StepOutputs


class CheckpointOutputs(StepOutputs):
    step = "checkpoint"

    path: str
    vllm_version: str
    ok: bool
    counts: dict[str, int]
    warnings: list[str]
    mtp: dict[str, Any] | None
    hf_config_path: str | None  # a corrected config copy the server must read (read by the serve command)
    stats: dict[str, Any]
