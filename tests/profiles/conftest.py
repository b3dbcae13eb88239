"""Fixtures for the profile tests: the CLI run in-process, JSON Schemas, workdir override files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dsv4setup.cli import main
from dsv4setup.core.outputs import StepOutputs
from dsv4setup.core.resources import package_file
from dsv4setup.core.state import State, StepRecord, StepStatus

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `dsv4setup ARGS...` in this process; returns exit code, stdout, stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        captured = capsys.readouterr()
        return CliResult(int(exited.value.code or 0), captured.out, captured.err)

    return run


def schema(name: str) -> dict[str, Any]:
    return json.loads(package_file("schemas", f"{name}.schema.json").read_text(encoding="utf-8"))


def assert_valid(doc: dict[str, Any], name: str) -> None:
    jsonschema.Draft202012Validator(schema(name)).validate(doc)


def done_state(outputs: StepOutputs) -> State:
    """A state in which the step of `outputs` finished with them."""
    return State(steps={outputs.step: StepRecord(status=StepStatus.DONE, outputs=outputs.model_dump(mode="json"))})
