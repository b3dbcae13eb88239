"""The patches step in the real engine: applies, verifies, sees a vLLM reinstall as drift."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4setup.core.errors import StepError
from dsv4setup.core.state import State, load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, RunContext, Selection
from dsv4setup.patches.step import PatchesStep, profile_patches
from dsv4setup.profiles.model import Profile
from tests.patches.conftest import build_synth
from tests.patches.helpers import build_wheel, snapshot


def _site(workdir: Workdir) -> Path:
    return workdir.venv_dir / "lib" / "python3.11" / "site-packages"


def _profile(profile: Profile, ids: list[str]) -> Profile:
    return profile.model_copy(update={"patches": ids})


def test_step_applies_verifies_and_reapplies_after_a_reinstall(workdir: Workdir, profile: Profile,
                                                               tmp_path: Path) -> None:
    synth = build_synth(tmp_path / "synth")
    shutil.copytree(synth.site, _site(workdir))
    pristine = snapshot(_site(workdir))
    step = PatchesStep(synth.manifest)
    runbook = Runbook([step], workdir, _profile(profile, ["alpha-fix"]))
    first = runbook.up(Selection())
    assert first.ok, first.error
    record = load_state(workdir.state_file).steps["patches"]
    assert record.outputs["applied"] == ["alpha-fix"] and record.outputs["changed"] == ["alpha-fix"]
    alpha = step.manifest().get("alpha-fix")
    assert record.outputs["diff_sha256"] == {"alpha-fix": alpha.variant_for("0.33.0")[1].sha256}
    assert (_site(workdir) / "vllm" / "alpha.py").read_text() == synth.patched["vllm/alpha.py"]
    assert (_site(workdir) / "vllm" / "beta.py").read_text() == synth.original["vllm/beta.py"]  # not listed
    assert runbook.plan(Selection())[0].action == "skip"
    # a reinstall of vLLM puts the wheel's files back: drift, and the next up patches again
    (_site(workdir) / "vllm" / "alpha.py").write_bytes(pristine["vllm/alpha.py"])
    decision = runbook.plan(Selection())[0]
    assert decision.action == "run" and "drift" in decision.reason and "alpha-fix applicable" in decision.reason
    assert runbook.up(Selection()).ok
    assert (_site(workdir) / "vllm" / "alpha.py").read_text() == synth.patched["vllm/alpha.py"]


def test_unknown_patch_id_names_it_and_the_known_ids(workdir: Workdir, profile: Profile, tmp_path: Path) -> None:
    synth = build_synth(tmp_path / "synth")
    shutil.copytree(synth.site, _site(workdir))
    step = PatchesStep(synth.manifest)
    ctx = RunContext(workdir, _profile(profile, ["alpha-fix", "typo-fix"]), State())
    with pytest.raises(StepError) as info:
        profile_patches(ctx, step.manifest())
    assert "typo-fix" in info.value.message and "alpha-fix, beta-fix" in (info.value.fix or "")
    result = Runbook([step], workdir, ctx.profile).up(Selection())
    assert not result.ok and result.error is not None and "typo-fix" in result.error.message


def test_conflict_fails_the_step_with_the_reinstall_hint_and_changes_nothing(workdir: Workdir, profile: Profile,
                                                                             tmp_path: Path) -> None:
    synth = build_synth(tmp_path / "synth")
    shutil.copytree(synth.site, _site(workdir))
    (_site(workdir) / "vllm" / "beta.py").write_text("hand-patched\n")
    before = snapshot(_site(workdir))
    result = Runbook([PatchesStep(synth.manifest)], workdir, _profile(profile, ["alpha-fix", "beta-fix"])).up(
        Selection())
    assert not result.ok and result.error is not None
    assert "beta.py" in result.error.message and "--force-reinstall" in (result.error.fix or "")
    assert snapshot(_site(workdir)) == before


def test_no_patches_in_the_profile_is_not_applicable(workdir: Workdir, profile: Profile) -> None:
    ctx = RunContext(workdir, profile, State())
    assert PatchesStep().not_applicable(ctx) == "the profile lists no patches"


def test_inputs_fingerprint_the_diffs_and_the_pinned_vllm(workdir: Workdir, profile: Profile) -> None:
    ctx = RunContext(workdir, _profile(profile, ["mtp-draft-hf-config-path"]), State())
    inputs = PatchesStep().inputs(ctx)
    manifest = PatchesStep().manifest()
    assert inputs["patches"] == ["mtp-draft-hf-config-path"]
    assert inputs["diff_sha256"]["mtp-draft-hf-config-path"] == [
        d.sha256 for d in manifest.get("mtp-draft-hf-config-path").diffs]
    assert inputs["vllm"] == f"{profile.vllm.package}=={profile.vllm.version}"


@pytest.mark.slow
def test_step_on_a_pip_installed_wheel_and_a_real_force_reinstall(workdir: Workdir, profile: Profile,
                                                                 tmp_path: Path) -> None:
    """pip writes the RECORD and performs the reinstall: the drift the step must notice is real."""
    synth = build_synth(tmp_path / "synth")
    wheel = build_wheel(tmp_path / "wheels", "vllm", "0.33.0",
                        files={"vllm/__init__.py": "", **synth.original})
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(workdir.venv_dir)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(workdir.venv_python), "install", "--no-deps", "--no-index"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    runbook = Runbook([PatchesStep(synth.manifest)], workdir, _profile(profile, ["alpha-fix", "beta-fix"]))
    assert runbook.up(Selection()).ok
    assert runbook.plan(Selection())[0].action == "skip"
    subprocess.run([*pip, "--force-reinstall", str(wheel)], check=True, capture_output=True)
    decision = runbook.plan(Selection())[0]
    assert decision.action == "run" and "drift" in decision.reason
    assert runbook.up(Selection()).ok
    site = next(workdir.venv_dir.glob("lib/python3.*/site-packages"))
    assert (site / "vllm" / "beta.py").read_text() == synth.patched["vllm/beta.py"]
