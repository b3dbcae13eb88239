"""`status --json` (dsv4setup.status/3, /4): what each step's last run and its postcondition check cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsv4setup.core.finding import Finding
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.state import load_state
from dsv4setup.core.status import STATUS_SCHEMA, status_doc
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, RunContext, Selection
from dsv4setup.profiles.model import Profile
from dsv4setup.status_check import record_only
from tests.conftest import REPO_ROOT
from tests.core import steps_for_tests as ts

pytestmark = pytest.mark.usefixtures("steps_dir")  # every test: markers in its tmp_path

CHECK_S = 0.05


class SlowCheckStep(ts.MarkerStep):
    """A marker step whose postcondition check takes at least CHECK_S (a real sleep in is_done)."""

    def is_done(self, ctx: RunContext) -> Finding:
        time.sleep(CHECK_S)
        return super().is_done(ctx)



def _timings(workdir: Workdir) -> dict[str, dict[str, object]]:
    doc = status_doc(load_state(workdir.state_file), ["alpha", "beta"])
    doc |= {"workdir": str(workdir.root), "workdir_chosen_by": workdir.chosen_by,
            "verification": record_only(doc["steps"]), "server": None, "service": None, "cluster": None}
    validate_document(doc)
    assert doc["schema"] == STATUS_SCHEMA == "dsv4setup.status/6"
    return {row["step"]: row["timings"] for row in doc["steps"]}


def test_run_and_check_costs_are_recorded_and_a_noop_up_refreshes_the_check(workdir: Workdir,
                                                                          profile: Profile) -> None:
    runbook = Runbook([SlowCheckStep("alpha", ()), ts.MarkerStep("beta", ("alpha",))], workdir, profile)
    assert runbook.up(Selection()).ok
    first = _timings(workdir)
    alpha = first["alpha"]
    assert isinstance(alpha["run_s"], float) and isinstance(alpha["verify_s"], float)
    assert alpha["verify_s"] >= CHECK_S and alpha["run_s"] >= alpha["verify_s"]  # the run ends with the check
    assert isinstance(first["beta"]["verify_s"], float) and first["beta"]["verify_s"] < alpha["verify_s"]
    time.sleep(1.1)  # verified_at is to the second
    second = runbook.up(Selection())
    assert [d.action for d in second.decisions] == ["skip", "skip"]
    again = _timings(workdir)
    assert again["alpha"]["run_s"] == alpha["run_s"]  # nothing ran
    assert isinstance(again["alpha"]["verify_s"], float) and again["alpha"]["verify_s"] >= CHECK_S
    assert str(again["alpha"]["verified_at"]) > str(alpha["verified_at"])


def test_a_failed_run_records_its_duration(workdir: Workdir, profile: Profile,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_STEPS_FAIL", "beta")
    assert not Runbook(ts.steps()[:2], workdir, profile).up(Selection()).ok
    timings = _timings(workdir)
    assert isinstance(timings["beta"]["run_s"], float) and timings["beta"]["verify_s"] is None


def test_a_state_written_before_timings_is_read_with_run_s_from_its_timestamps(workdir: Workdir) -> None:
    record = {"status": "done", "attempts": 1, "pid": None, "started_at": "2026-11-30T10:00:00+00:00",
              "finished_at": "2026-11-30T10:04:07+00:00", "fingerprint": "f", "fingerprint_inputs": {},
              "outputs": {}, "error": None, "progress": None}
    workdir.state_file.write_text(json.dumps({
        "schema": "dsv4setup.state/2", "created_at": "2026-11-30T10:00:00+00:00",
        "updated_at": "2026-11-30T10:04:07+00:00", "profile": "cpu-tiny", "steps": {"alpha": record}}))
    timings = _timings(workdir)
    assert timings["alpha"] == {"run_s": 247.0, "verify_s": None, "verified_at": None}
    assert timings["beta"] == {"run_s": None, "verify_s": None, "verified_at": None}  # never ran


def test_status_json_of_the_cli_carries_timings(workdir: Workdir, tmp_path: Path) -> None:
    env = {**os.environ, "DSV4SETUP_WORKDIR": str(workdir.root), "NO_COLOR": "1",
           "DSV4SETUP_RUNBOOK": "tests.core.steps_for_tests:steps", "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-m", "dsv4setup", "up", "--yes", "--profile", "cpu-tiny"], env=env, check=True,
                   capture_output=True, timeout=300)
    out = subprocess.run([sys.executable, "-m", "dsv4setup", "status", "--json"], env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    doc = json.loads(out)
    validate_document(doc)
    assert all(isinstance(row["timings"]["run_s"], float) for row in doc["steps"])
