"""The one JSON document a `dsv4setup ... --json` call prints, schema-checked: in-process or from a subprocess."""

from __future__ import annotations

import json
import subprocess

import pytest

from dsv4setup.cli import main
from dsv4setup.core.jsonschemas import validate_document


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    """The exit code and the document of `dsv4setup ARGS` run in this process ({} when it printed none)."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr().out
    doc = json.loads(out) if out.strip() else {}
    if doc:
        validate_document(doc)
    return int(info.value.code or 0), doc


def json_of(result: subprocess.CompletedProcess[str]) -> dict:
    """The document a finished `dsv4setup ... --json` subprocess printed (its stderr shown when it printed none)."""
    assert result.stdout.strip(), result.stderr[-3000:]
    doc = json.loads(result.stdout)
    validate_document(doc)
    return doc
