"""The patches step parses its manifest once per `up`, and a changed diff or index is still seen."""

from __future__ import annotations

import shutil
from pathlib import Path

from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection
from dsv4setup.patches.step import PatchesStep
from dsv4setup.profiles.model import Profile
from tests.patches.conftest import build_synth


def test_one_parse_serves_inputs_check_and_run(tmp_path: Path) -> None:
    step = PatchesStep(build_synth(tmp_path / "synth").manifest)
    assert step.manifest() is step.manifest()


def test_a_diff_changed_after_the_run_is_seen_by_the_same_step(workdir: Workdir, profile: Profile,
                                                              tmp_path: Path) -> None:
    synth = build_synth(tmp_path / "synth")
    shutil.copytree(synth.site, workdir.venv_dir / "lib" / "python3.11" / "site-packages")
    step = PatchesStep(synth.manifest)
    runbook = Runbook([step], workdir, profile.model_copy(update={"patches": ["alpha-fix"]}))
    assert runbook.up(Selection()).ok
    assert runbook.plan(Selection())[0].action == "skip"
    before = step.manifest()
    diff = before.get("alpha-fix").diffs[0].path
    diff.write_text(diff.read_text() + " \n")  # a trailing context line: the diff's sha256 moves
    decision = runbook.plan(Selection())[0]
    assert step.manifest() is not before
    assert decision.action == "run" and "inputs changed: diff_sha256" in decision.reason


def test_an_index_edited_after_the_first_parse_is_parsed_again(tmp_path: Path) -> None:
    step = PatchesStep(build_synth(tmp_path / "synth").manifest)
    index = step.manifest().path
    assert "beta-fix" in step.manifest().by_id
    text = index.read_text()
    index.write_text(text.replace("id: beta-fix", "id: gamma-fix"))
    assert "gamma-fix" in step.manifest().by_id and "beta-fix" not in step.manifest().by_id
