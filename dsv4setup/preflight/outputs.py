"""What the preflight step records for later steps (validated by the engine before saving)."""

from __future__ import annotations

from typing import Any

from dsv4setup.core.outputs import StepOutputs


class PreflightOutputs(StepOutputs):
    step = "preflight"

    snapshot: str  # the hardware snapshot file
    report: str  # the doctor report file
    recommendation: dict[str, Any] | None  # what `up` serves with: the serve command with the findings
    findings: dict[str, Any]  # serve args and env the checks imply (read by the serve command)
    warnings: list[str]  # ids of the checks that warned
    toolkit_arch: str | None = None  # the TP group's nvcc target (read by the toolkit step)
