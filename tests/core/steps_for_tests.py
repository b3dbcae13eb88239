"""Small real steps for engine tests: each writes a marker file; is_done checks that file.

Used in-process and, through DSV4SETUP_RUNBOOK=steps_for_tests:steps, by `dsv4setup up` in a
subprocess (the kill-and-resume test). Env knobs: TEST_STEPS_DIR (where markers and the run
journal go), TEST_STEPS_SLOW (step names, comma-separated, that sleep while "running"),
TEST_STEPS_FAIL (a step that fails), TEST_STEPS_INPUT (an input value fingerprinted by every step).

For the concurrent engine (`branch_steps`, two branches as the runbook's): TEST_STEPS_MEET (steps
that each wait until all of them have started: they only get past it when they run at the same
time), TEST_STEPS_AFTER_FAILED (`a:b`: step a finishes only once the state file records step b
failed), TEST_STEPS_CHILD (a step that runs a real child process, its pid in `<step>.child`, and
fails when the child dies of a signal); TEST_STEPS_WAIT_S bounds each of these waits (default 60).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
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

    def __init__(self, name: str, needs: tuple[str, ...], after: tuple[str, ...] = ()) -> None:
        self.name = name  # type: ignore[misc]
        self.description = f"test step {name}"  # type: ignore[misc]
        self.needs = needs  # type: ignore[misc]
        self.after = after  # type: ignore[misc]

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
        slow, meet = _names("TEST_STEPS_SLOW"), _names("TEST_STEPS_MEET")
        if self.name in slow or self.name in meet:
            (_dir() / f"{self.name}.started").touch()
        if self.name in meet:
            for other in meet:
                started = _dir() / f"{other}.started"
                _await(started.exists, f"{self.name}: {other} never ran beside it")
        after = dict(pair.split(":") for pair in _names("TEST_STEPS_AFTER_FAILED"))
        if self.name in after:
            _await(lambda: _recorded_failed(ctx, after[self.name]), f"{self.name}: {after[self.name]} never failed")
        if os.environ.get("TEST_STEPS_FAIL") == self.name:
            raise StepError(f"{self.name} failed on purpose", fix="unset TEST_STEPS_FAIL")
        if os.environ.get("TEST_STEPS_CHILD") == self.name:
            self._run_child(ctx)
        if self.name in slow:
            time.sleep(float(os.environ.get("TEST_STEPS_SLEEP", "30")))
        self.marker.touch()
        return {"marker": str(self.marker)}

    def _run_child(self, ctx: RunContext) -> None:
        child = subprocess.Popen(["sleep", os.environ.get("TEST_STEPS_SLEEP", "30")])
        (_dir() / f"{self.name}.child").write_text(str(child.pid))
        if child.wait() != 0:
            ctx.require_log().line(f"child {child.pid} ended with {child.returncode}")
            raise StepError(f"{self.name}: its child process died ({child.returncode})", fix="run it again")


def _names(var: str) -> list[str]:
    return [n for n in os.environ.get(var, "").split(",") if n]


def _await(done: Callable[[], bool], failure: str) -> None:
    deadline = time.monotonic() + float(os.environ.get("TEST_STEPS_WAIT_S", "60"))
    while not done():
        if time.monotonic() > deadline:
            raise StepError(failure)
        time.sleep(0.02)


def _recorded_failed(ctx: RunContext, step: str) -> bool:
    try:
        doc = json.loads(ctx.workdir.state_file.read_text())
    except (OSError, ValueError):
        return False
    return bool(doc["steps"].get(step, {}).get("status") == "failed")


BRANCHES = ("root", "build", "patch", "fetch", "lint", "join")


def branch_steps() -> list[Step]:
    """Two branches after `root`, as the runbook's: build -> patch beside fetch (which comes after root, needing
    nothing of it, as download after preflight); lint needs fetch and build (as checkpoint needs download and
    vllm); join needs everything before it (as cluster and serve)."""
    return [MarkerStep("root", ()), MarkerStep("build", ("root",)), MarkerStep("patch", ("build",)),
            MarkerStep("fetch", (), after=("root",)), MarkerStep("lint", ("fetch", "build")),
            MarkerStep("join", ("root", "build", "patch", "fetch", "lint"))]


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


def marker_env(tmp_path: Path, runbook: str, **extra: str) -> dict[str, str]:
    """The environment of a real `dsv4setup` subprocess running this module's `runbook` (a function name here),
    its markers under tmp_path/markers, its workdir tmp_path/wd; `extra`: more TEST_STEPS_* settings."""
    from tests.conftest import REPO_ROOT

    markers = tmp_path / "markers"
    markers.mkdir()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TEST_STEPS_")}
    environ.update({"DSV4SETUP_RUNBOOK": f"tests.core.steps_for_tests:{runbook}", "TEST_STEPS_DIR": str(markers),
                    "PYTHONPATH": str(REPO_ROOT), "DSV4SETUP_WORKDIR": str(tmp_path / "wd"), "NO_COLOR": "1", **extra})
    return environ
