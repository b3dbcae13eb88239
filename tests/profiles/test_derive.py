"""Profiles derived for supported GPUs no shipped profile names: the choice, the doctor's verdict, and the
round trip `profile show --derived` -> file -> `--profile FILE` (real CLI subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection
from dsv4setup.preflight.report import build_report
from dsv4setup.preflight.select import select_profile
from dsv4setup.profiles.derive import derive_for
from dsv4setup.profiles.resolve import resolve_profile
from dsv4setup.runbook import runbook_steps
from dsv4setup.serve.command import render_plan
from tests.preflight.conftest import FIXTURES, load_fixture

# fixture -> (derived name, TP, preset, toolkit arch, base profile's checkpoint)
EXPECTED = {
    "h100-pcie-x4": ("derived-h100-pcie-tp4", 4, "524k", "sm_90a", "canada-quant/DeepSeek-V4-Flash-W4A16-FP8-MTP"),
    "b300-x2": ("derived-b300-sxm6-ac-tp1", 1, "524k", "sm_103a", "deepseek-ai/DeepSeek-V4-Flash"),
    "h20-x8": ("derived-h20-tp2", 2, "524k", "sm_90a", "canada-quant/DeepSeek-V4-Flash-W4A16-FP8-MTP"),
}


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_each_unlisted_box_gets_a_named_derived_profile_and_a_passing_doctor(fixture: str) -> None:
    name, tp, preset, arch, repo = EXPECTED[fixture]
    snap = load_fixture(fixture)
    choice = select_profile(snap, None, use_workdir=False)
    profile = choice.profile
    assert profile is not None and choice.how == "derived for this machine"
    assert (profile.name, profile.serve.tensor_parallel_size, profile.preset) == (name, tp, preset)
    assert profile.derived and not profile.verified
    assert (profile.toolkit.arch, profile.model.repo, profile.spec.num_speculative_tokens) == (arch, repo, 1)
    assert profile.serve.max_model_len == 524288
    report = build_report(snap, choice.judged())
    assert report.ok, report.failures
    rec = report.recommendation
    assert rec is not None and (rec["profile"], rec["derived"], rec["verified"]) == (name, True, False)
    assert any(note.startswith(f"TP={tp}: the smallest power of two") for note in rec["notes"])
    validate_document(report.to_doc())


def test_the_b300_builds_for_sm_103a_not_the_base_profiles_sm_100a() -> None:
    profile = derive_for(load_fixture("b300-x2")).profile
    assert profile is not None and profile.vllm.torch_arch_list == "10.3a"
    assert profile.match.compute_capability == ["10.3"] and profile.match.interconnect == "any"  # TP=1


def test_when_only_a_smaller_context_fits_the_largest_that_fits_is_chosen_and_said() -> None:
    snap = load_fixture("b300-x2")
    snap["gpus"] = snap["gpus"][:1]
    snap["links"] = []
    snap["gpus"][0]["memory_total_bytes"] = 179_000_000_000  # x 0.92 = 164.7 GB: 524k needs 165.3 GB, 262k 164.1
    derivation = derive_for(snap)
    assert derivation.fits and derivation.profile is not None and derivation.profile.preset == "262k"
    assert "only a smaller context fits: 262k instead of 524k (524k needs 2 GPUs like these)" in derivation.notes
    report = build_report(snap, select_profile(snap, None, use_workdir=False).judged())
    assert report.ok and {r.id: r.status for r in report.checks}["gpu.memory"] == "pass"


def test_when_nothing_fits_gpu_memory_fails_naming_how_many_more_gpus() -> None:
    snap = load_fixture("h100-pcie-x4")
    snap["gpus"] = snap["gpus"][:2]
    snap["links"] = [x for x in snap["links"] if x["b"] < 2]
    choice = select_profile(snap, None, use_workdir=False)
    assert choice.derivation is not None and not choice.derivation.fits
    checks = {r.id: r for r in build_report(snap, choice.judged()).checks}
    assert checks["gpu.memory"].status == "fail"
    assert "use 4 GPUs like these (TP=4: 2 more than this machine has" in (checks["gpu.memory"].fix or "")
    assert "nothing fits" in choice.derivation.notes[-1]


def test_a_named_profile_that_fits_only_a_smaller_preset_is_told_which() -> None:
    snap = load_fixture("b300-x2")
    snap["gpus"] = snap["gpus"][:1]
    snap["links"] = []
    snap["gpus"][0]["memory_total_bytes"] = 179_000_000_000
    profile = derive_for(snap).profile
    assert profile is not None
    doc = profile.document()
    doc["preset"] = "524k"
    from dsv4setup.profiles.model import Profile

    checks = {r.id: r for r in build_report(snap, Profile.model_validate(doc).with_preset()).checks}
    assert checks["gpu.memory"].status == "fail"
    assert "a smaller context: --set preset=262k (262,144 tokens fit these GPUs)" in (checks["gpu.memory"].fix or "")


def test_a_derived_name_for_other_hardware_is_refused() -> None:
    from dsv4setup.core.errors import UsageError

    with pytest.raises(UsageError) as refused:
        select_profile(load_fixture("h20-x8"), None, "derived-h100-pcie-tp4", use_workdir=False)
    assert "derived for other hardware; this machine derives derived-h20-tp2" in refused.value.message


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSV4SETUP_WORKDIR": str(tmp_path / "wd")}
    return subprocess.run([sys.executable, "-m", "dsv4setup", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def _same_plan(doc: dict[str, Any]) -> dict[str, Any]:
    """A plan without what says where the profile came from (file, selection, origins)."""
    return {k: v for k, v in doc.items() if k not in ("profile_file", "selected_by", "workdir_chosen_by", "origins",
                                                        "overridden")}


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_a_saved_derived_profile_renders_the_same_plan(fixture: str, tmp_path: Path) -> None:
    shown = _cli(tmp_path, "profile", "show", "--derived", "--snapshot", str(FIXTURES / f"{fixture}.json"))
    assert shown.returncode == 0, shown.stderr
    saved = tmp_path / "mine.yaml"
    saved.write_text(shown.stdout)
    assert yaml.safe_load(shown.stdout)["derived"] is True
    planned = _cli(tmp_path, "plan", "--profile", str(saved), "--json")
    assert planned.returncode == 0, planned.stderr
    from_file = json.loads(planned.stdout)
    validate_document(from_file)
    assert (from_file["profile"], from_file["derived"], from_file["verified"]) == (EXPECTED[fixture][0], True, False)
    wd = Workdir(tmp_path / "wd")
    resolved = resolve_profile(wd, EXPECTED[fixture][0], [], snapshot=load_fixture(fixture))
    runbook = Runbook(runbook_steps(), wd, resolved.profile)
    derived = render_plan(resolved, wd, load_state(wd.state_file), runbook.plan(Selection()))
    assert _same_plan(derived) == _same_plan(from_file)
    as_json = _cli(tmp_path, "profile", "show", "--derived", "--snapshot", str(FIXTURES / f"{fixture}.json"),
                   "--json")
    doc = json.loads(as_json.stdout)
    validate_document(doc)
    assert doc["profile"] == yaml.safe_load(shown.stdout) and doc["fits"] is True


def test_show_derived_without_a_gpu_says_so_and_exits_1(tmp_path: Path) -> None:
    shown = _cli(tmp_path, "profile", "show", "--derived", "--snapshot", str(FIXTURES / "cpu-only.json"))
    assert shown.returncode == 1 and shown.stdout == ""
    assert "nothing to derive: no NVIDIA GPU visible" in shown.stderr


def test_bench_fingerprints_mark_a_derived_profile_and_know_its_overrides(tmp_path: Path) -> None:
    """bench compares what differs from the profile as derived from the snapshot preflight judged."""
    from dsv4setup.bench.fingerprint import base_profile, profile_part
    from dsv4setup.preflight.snapshot import SNAPSHOT_FILE, save_snapshot

    wd = Workdir(tmp_path / "wd").ensure()
    snap = load_fixture("h20-x8")
    save_snapshot(wd.root / SNAPSHOT_FILE, snap)
    resolved = resolve_profile(wd, "derived-h20-tp2", ["serve.max_num_seqs=2"], snapshot=snap)
    base = base_profile(resolved.profile, resolved.source_file, wd)
    assert base is not None and base.name == "derived-h20-tp2"
    part = profile_part(resolved.profile, base, ["python", "-m", "vllm"], {})
    assert (part["derived"], part["verified"], part["overrides_known"]) == (True, False, True)
    assert part["overrides"] == {"serve.max_num_seqs": 2}


def test_status_says_derived_and_verified_as_the_preflight_step_recorded() -> None:
    from dsv4setup.core.state import State, StepRecord, StepStatus
    from dsv4setup.core.status import status_doc

    snap = load_fixture("h20-x8")
    report = build_report(snap, select_profile(snap, None, use_workdir=False).judged())
    state = State(profile="derived-h20-tp2", steps={"preflight": StepRecord(
        status=StepStatus.DONE, outputs={"recommendation": report.recommendation, "findings": report.findings})})
    from dsv4setup.status_check import record_only

    doc = status_doc(state, ["preflight"])
    doc |= {"workdir": "/data/dsv4", "workdir_chosen_by": "--workdir", "verification": record_only(doc["steps"]),
            "server": None, "cluster": None}  # as status_document adds
    validate_document(doc)
    assert (doc["derived"], doc["verified"], doc["demo"]) == (True, False, False)
    fresh = status_doc(State(), ["preflight"])
    assert (fresh["derived"], fresh["verified"], fresh["demo"]) == (None, None, None)


def test_plan_and_up_say_the_cpu_demo_is_a_demo(tmp_path: Path) -> None:
    """Real CLI: every report of the demo says it is a runbook demo, not DeepSeek-V4-Flash."""
    for args in (("plan", "--profile", "cpu-tiny"), ("up", "--profile", "cpu-tiny", "--dry-run")):
        done = _cli(tmp_path, *args, "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        validate_document(doc)
        assert doc["demo"] is True and "not DeepSeek-V4-Flash" in doc["notice"] and doc["derived"] is False
        human = _cli(tmp_path, *args)
        assert human.returncode == 0 and "not DeepSeek-V4-Flash" in human.stdout + human.stderr
