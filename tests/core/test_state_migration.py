"""A state file written by the first release (dsv4setup.state/1, step errors with `hint`) still loads:
read as this release's state (`fix`), shown by `status --json` against the current schema, rewritten on save."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.state import STATE_SCHEMA, StepStatus, load_state, save_state

FIRST_RELEASE = Path(__file__).parent / "fixtures" / "state-first-release.json"


def test_first_release_state_loads_with_fix_for_hint_and_saves_as_current(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    shutil.copy(FIRST_RELEASE, path)
    state = load_state(path)
    failed = state.steps["vllm"]
    assert failed.status == StepStatus.FAILED and failed.error is not None
    assert failed.error.fix == "check free space and permissions under /srv/dsv4"
    assert state.steps["preflight"].outputs["snapshot"] == "/srv/dsv4/run/hardware.json"
    save_state(path, state)
    saved = json.loads(path.read_text())
    assert saved["schema"] == STATE_SCHEMA and "hint" not in saved["steps"]["vllm"]["error"]
    assert load_state(path).steps["vllm"].error == failed.error


def test_status_json_reads_a_first_release_workdir(tmp_path: Path) -> None:
    shutil.copy(FIRST_RELEASE, tmp_path / "state.json")
    result = subprocess.run([sys.executable, "-m", "dsv4setup", "status", "--json", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate_document(doc)
    row = next(r for r in doc["steps"] if r["step"] == "vllm")
    assert row["error"]["fix"] == "check free space and permissions under /srv/dsv4"
