"""Small real steps for engine tests: each writes a marker file; is_done checks that file.

Used in-process and, through DSV4SETUP_RUNBOOK=steps_for_tests:steps, by `dsv4setup up` in a
subprocess (the kill-and-resume test). Env knobs: TEST_STEPS_DIR (where markers and the run
journal go), TEST_STEPS_SLOW (a step name that sleeps while "running"), TEST_STEPS_FAIL (a step
that fails), TEST_STEPS_INPUT (an input value fingerprinted by every step).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dsv4setup.core.errors import StepError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.core.outputs import StepOutputs
from dsv4setup.engine import RunContext, Step

NAMES = ("alpha", "beta", "gamma", "delta")


def _dir() -> Path:
    return Path(os.environ["TEST_STEPS_DIR"])


class MarkerOutputs(StepOutputs):
    step = "marker"

    marker: str


class MarkerStep(Step):
    Outputs = MarkerOutputs

    def __init__(self, name: str, needs: tuple[str, ...]) -> None:
        self.name = name  # type: ignore[misc]
        self.description = f"test step {name}"  # type: ignore[misc]
        self.needs = needs  # type: ignore[misc]

    @property
    def marker(self) -> Path:
        return _dir() / f"{self.name}.done"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"input": os.environ.get("TEST_STEPS_INPUT", "v1"), "profile": ctx.profile.name}

    def is_done(self, ctx: RunContext) -> Finding:
        return postcondition(self.marker.exists(), f"marker {self.marker.name}")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        with (_dir() / "journal").open("a") as fh:  # one line per real execution
            fh.write(f"{self.name}\n")
        ctx.require_log().line(f"running {self.name}")
        if os.environ.get("TEST_STEPS_FAIL") == self.name:
            raise StepError(f"{self.name} failed on purpose", fix="unset TEST_STEPS_FAIL")
        if os.environ.get("TEST_STEPS_SLOW") == self.name:
            (_dir() / f"{self.name}.started").touch()
            time.sleep(float(os.environ.get("TEST_STEPS_SLEEP", "30")))
        self.marker.touch()
        return {"marker": str(self.marker)}


def steps() -> list[Step]:
    return [MarkerStep(n, (NAMES[i - 1],) if i else ()) for i, n in enumerate(NAMES)]


def journal(markers: Path | None = None) -> list[str]:
    path = (markers or _dir()) / "journal"
    return path.read_text().split() if path.exists() else []


class StandInStep(Step):
    """Stands in for an earlier step of the real runbook: only its outputs matter to the step under test."""

    def __init__(self, outputs: StepOutputs) -> None:
        self.name = outputs.step  # type: ignore[misc]
        self.description = f"in-test {outputs.step} outputs"  # type: ignore[misc]
        self.Outputs = type(outputs)  # type: ignore[misc]
        self._outputs = outputs

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {}

    def is_done(self, ctx: RunContext) -> Finding:
        return postcondition(True, "in-test")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return self._outputs.model_dump(mode="json")


class ProvingMarkerStep(MarkerStep):
    """A marker step whose proof is void once the steps it `proves` run (as smoke proves serve)."""

    def __init__(self, name: str, needs: tuple[str, ...], proves: tuple[str, ...]) -> None:
        super().__init__(name, needs)
        self.proves = proves  # type: ignore[misc]


def serving_steps() -> list[Step]:
    """Marker steps named as the real download, serve and smoke (the profile's expected_s apply); smoke proves serve."""
    return [MarkerStep("download", ()), MarkerStep("serve", ("download",)),
            ProvingMarkerStep("smoke", ("serve",), ("serve",))]
