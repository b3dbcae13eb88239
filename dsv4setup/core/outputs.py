"""A step's declared outputs: what its run records in the state file for later steps to read.

Each step package declares its model in `<pkg>/outputs.py` (a subclass of StepOutputs naming
its step); the step points to it as `Outputs`. The engine validates what `run` returns against
it before saving, and later steps read it by attribute through `RunContext.outputs(Model)`.
Undeclared keys are refused, so the declaration and the run cannot drift apart.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class StepOutputs(BaseModel):
    """Base of every step's outputs model; `step` names the step that writes it."""

    model_config = ConfigDict(extra="forbid")

    step: ClassVar[str]
