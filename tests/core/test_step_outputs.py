"""Every step declares its outputs (Ansible's RETURN is the model): the declaration names its step,
the engine refuses a run whose outputs differ from it, and later steps read them by attribute.

What each real step writes is checked against its declaration on every run through the engine:
the step tests of each package and the cpu-tiny end-to-end run go through `Runbook.up`.
"""

from __future__ import annotations

from typing import Any

import pytest

from dsv4setup.core.errors import StateError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.core.outputs import StepOutputs
from dsv4setup.core.state import StepStatus, load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, RunContext, Selection, Step
from dsv4setup.profiles.model import Profile
from dsv4setup.runbook import OPTIONAL_STEPS, STEP_ORDER, load_step
from dsv4setup.toolkit.outputs import ToolkitOutputs


@pytest.mark.parametrize("name", STEP_ORDER + OPTIONAL_STEPS)
def test_every_step_declares_outputs_named_after_it(name: str) -> None:
    step = load_step(name)
    assert issubclass(step.Outputs, StepOutputs) and step.Outputs.step == name
    assert step.Outputs.__module__ == f"dsv4setup.{name}.outputs"
    assert step.Outputs.model_fields, name  # a declaration, not an empty shell


class WritesStep(Step):
    """Returns whatever the test hands it, under the toolkit step's declaration."""

    name = "toolkit"
    description = "writes the given outputs"
    Outputs = ToolkitOutputs

    def __init__(self, outputs: dict[str, Any]) -> None:
        self.outputs = outputs

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {}

    def is_done(self, ctx: RunContext) -> Finding:
        return postcondition(True, "written")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return self.outputs


GOOD = {"cuda_home": "/w/toolkit", "nvcc": "/w/toolkit/bin/nvcc", "version": "13.0.2", "release": "13.0.2",
        "route": "conda", "arch": "sm_120a"}


def test_outputs_matching_the_declaration_are_saved_and_read_by_attribute(workdir: Workdir, profile: Profile) -> None:
    assert Runbook([WritesStep(GOOD)], workdir, profile).up(Selection()).ok
    state = load_state(workdir.state_file)
    toolkit = RunContext(workdir, profile, state).outputs(ToolkitOutputs)
    assert toolkit is not None and toolkit.arch == "sm_120a" and toolkit.nvcc == "/w/toolkit/bin/nvcc"


@pytest.mark.parametrize("outputs", [{**GOOD, "undeclared": 1}, {k: v for k, v in GOOD.items() if k != "arch"}],
                         ids=["undeclared-key", "missing-key"])
def test_outputs_that_differ_from_the_declaration_fail_the_step_and_are_not_saved(
        workdir: Workdir, profile: Profile, outputs: dict[str, Any]) -> None:
    result = Runbook([WritesStep(outputs)], workdir, profile).up(Selection())
    assert not result.ok and result.error is not None and "internal error in step toolkit" in result.error.message
    record = load_state(workdir.state_file).steps["toolkit"]
    assert record.status == StepStatus.FAILED and record.outputs == {}


def test_stored_outputs_this_version_cannot_read_name_the_step_to_redo(workdir: Workdir, profile: Profile) -> None:
    assert Runbook([WritesStep(GOOD)], workdir, profile).up(Selection()).ok
    state = load_state(workdir.state_file)
    state.steps["toolkit"].outputs = {"cuda_home": "/w/toolkit"}  # e.g. written by another dsv4setup version
    with pytest.raises(StateError) as caught:
        RunContext(workdir, profile, state).outputs(ToolkitOutputs)
    assert caught.value.command == "dsv4setup up --redo toolkit"
