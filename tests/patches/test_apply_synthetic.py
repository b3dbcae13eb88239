"""Status, atomic apply and revert on a small synthetic vLLM tree (real RECORD, real GNU patch)."""

from __future__ import annotations

from pathlib import Path

import pytest

import dsv4setup.patches.backups as backups_mod
from dsv4setup.core.errors import DsvError
from dsv4setup.patches.apply import PatchConflictError, apply_patches, revert_patches
from dsv4setup.patches.difftool import run_diff
from dsv4setup.patches.manifest import load_manifest
from dsv4setup.patches.status import check_patches
from dsv4setup.patches.target import find_target
from tests.patches.conftest import Synth, build_synth
from tests.patches.helpers import diff_patch, make_site_packages, snapshot, unified_diff, write_manifest


def statuses(synth: Synth, root: Path | None = None) -> dict[str, str]:
    manifest = load_manifest(synth.manifest)
    return {r.id: r.status for r in check_patches(list(manifest.patches), find_target(root or synth.site))}


def test_pristine_tree_is_applicable_then_applied_then_reverted_byte_identical(synth: Synth) -> None:
    manifest, target = load_manifest(synth.manifest), find_target(synth.site)
    before = snapshot(synth.site)
    assert statuses(synth) == {"alpha-fix": "applicable", "beta-fix": "applicable"}
    result = apply_patches(manifest, target)
    assert result.changed == ["alpha-fix", "beta-fix"]
    assert [r.status for r in result.reports] == ["applied", "applied"]
    for rel, text in synth.patched.items():
        assert (synth.site / rel).read_text() == text
    assert sorted((synth.site / ".dsv4setup-backup" / "files" / "vllm").iterdir())  # originals kept
    again = apply_patches(manifest, target)
    assert again.changed == [] and statuses(synth) == {"alpha-fix": "applied", "beta-fix": "applied"}
    reverted = revert_patches(manifest, target)
    assert reverted.changed == ["alpha-fix", "beta-fix"]
    after = {k: v for k, v in snapshot(synth.site).items() if not k.startswith(".dsv4setup-backup")}
    assert after == before
    assert statuses(synth) == {"alpha-fix": "applicable", "beta-fix": "applicable"}


def test_foreign_modified_file_is_a_conflict_and_nothing_changes(synth: Synth) -> None:
    path = synth.site / "vllm" / "beta.py"
    path.write_text(path.read_text() + "# local hack\n")
    before = snapshot(synth.site)
    assert statuses(synth) == {"alpha-fix": "applicable", "beta-fix": "conflict"}
    with pytest.raises(PatchConflictError) as info:
        apply_patches(load_manifest(synth.manifest), find_target(synth.site))
    assert str(path) in info.value.message and "modified by something else" in info.value.message
    assert "pip install --force-reinstall --no-deps vllm==0.33.0" in (info.value.fix or "")
    assert snapshot(synth.site) == before  # alpha was applicable, but nothing at all was touched


def test_a_change_on_top_of_our_patch_is_a_conflict_and_revert_refuses(synth: Synth) -> None:
    manifest, target = load_manifest(synth.manifest), find_target(synth.site)
    apply_patches(manifest, target)
    path = synth.site / "vllm" / "alpha.py"
    path.write_text(path.read_text().replace("VALUE_ALPHA_2 = 2", "VALUE_ALPHA_2 = 3"))
    before = snapshot(synth.site)
    with pytest.raises(PatchConflictError, match="alpha-fix"):
        revert_patches(manifest, target)
    assert snapshot(synth.site) == before


def test_injected_write_failure_on_the_second_patch_restores_the_first(synth: Synth,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(synth.site)
    real_write = backups_mod.write_bytes_atomically
    calls: list[Path] = []

    def failing_write(path: Path, data: bytes) -> None:
        if path.name == "beta.py" and ".dsv4setup-backup" not in path.parts and not calls:
            calls.append(path)
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(backups_mod, "write_bytes_atomically", failing_write)
    with pytest.raises(DsvError, match="beta.py failed .*every file already written was restored"):
        apply_patches(load_manifest(synth.manifest), find_target(synth.site))
    assert calls
    after = {k: v for k, v in snapshot(synth.site).items() if not k.startswith(".dsv4setup-backup")}
    assert after == before  # alpha.py, written first, is back to the original bytes


def test_second_patch_whose_hunks_do_not_fit_stops_everything_before_any_change(tmp_path: Path) -> None:
    synth = build_synth(tmp_path)
    bad = unified_diff("vllm/beta.py", synth.original["vllm/beta.py"].replace("VALUE_BETA_19", "OTHER_19"),
                       synth.patched["vllm/beta.py"].replace("VALUE_BETA_19", "OTHER_19"))
    (synth.manifest.parent / "beta-fix" / "vllm-0.33.diff").write_text(bad)
    before = snapshot(synth.site)
    assert statuses(synth) == {"alpha-fix": "applicable", "beta-fix": "conflict"}
    with pytest.raises(PatchConflictError, match="does not fit the pristine files"):
        apply_patches(load_manifest(synth.manifest), find_target(synth.site))
    assert snapshot(synth.site) == before


def test_injected_corruption_after_writing_is_caught_by_verification_and_rolled_back(
        synth: Synth, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(synth.site)
    real_write = backups_mod.write_bytes_atomically

    def corrupting_write(path: Path, data: bytes) -> None:
        corrupt = path.name == "beta.py" and ".dsv4setup-backup" not in path.parts
        real_write(path, data.replace(b"FIXED_BETA_FIX", b"BROKEN") if corrupt else data)

    monkeypatch.setattr(backups_mod, "write_bytes_atomically", corrupting_write)
    with pytest.raises(DsvError, match="verification failed after patching, every file restored"):
        apply_patches(load_manifest(synth.manifest), find_target(synth.site))
    after = {k: v for k, v in snapshot(synth.site).items() if not k.startswith(".dsv4setup-backup")}
    assert after == before


def test_partially_patched_multi_file_patch_is_a_conflict(tmp_path: Path) -> None:
    synth = build_synth(tmp_path)
    both = "".join(unified_diff(rel, synth.original[rel], synth.patched[rel]) for rel in synth.original)
    patch = diff_patch("both-fix", "vllm/alpha.py", "both.diff", fixed="FIXED_ALPHA_FIX")
    patch["files"] = ["vllm/alpha.py", "vllm/beta.py"]
    manifest = write_manifest(tmp_path / "m2", [patch], {"both.diff": both})
    (synth.site / "vllm" / "alpha.py").write_text(synth.patched["vllm/alpha.py"])
    report = check_patches(list(load_manifest(manifest).patches), find_target(synth.site))[0]
    assert report.status == "conflict" and "partially patched" in report.detail


def test_restored_backup_is_used_and_a_stale_backup_is_ignored(synth: Synth) -> None:
    manifest, target = load_manifest(synth.manifest), find_target(synth.site)
    apply_patches(manifest, target, ["alpha-fix"])
    stale = synth.site / ".dsv4setup-backup" / "files" / "vllm" / "alpha.py"
    stale.write_text("garbage\n")  # backup damaged: its hash no longer matches the index
    revert_patches(manifest, target, ["alpha-fix"])
    assert (synth.site / "vllm" / "alpha.py").read_text() == synth.original["vllm/alpha.py"]
    assert not stale.exists()


def test_version_without_diff_is_not_applicable_and_explicit_apply_refuses(tmp_path: Path) -> None:
    synth = build_synth(tmp_path, version="0.31.0")
    assert statuses(synth) == {"alpha-fix": "not-applicable", "beta-fix": "not-applicable"}
    before = snapshot(synth.site)
    with pytest.raises(DsvError, match=r"NEEDED \(vllm/alpha.py has the unfixed code\) but there is no diff "
                                       r"for vllm 0.31.0 \(diffs exist for >=0.33,<0.34\)"):
        apply_patches(load_manifest(synth.manifest), find_target(synth.site), ["alpha-fix"])
    assert apply_patches(load_manifest(synth.manifest), find_target(synth.site)).changed == []
    assert snapshot(synth.site) == before


def test_fix_already_upstream_in_a_pristine_file(tmp_path: Path) -> None:
    synth = build_synth(tmp_path)
    doc = synth.manifest.read_text().replace("FIXED_BETA_FIX", "VALUE_BETA_3 = 3")
    synth.manifest.write_text(doc)  # beta's probe now matches the pristine file
    assert statuses(synth) == {"alpha-fix": "applicable", "beta-fix": "upstream"}
    assert apply_patches(load_manifest(synth.manifest), find_target(synth.site)).changed == ["alpha-fix"]


def test_upstream_entries_present_missing_and_absent(tmp_path: Path) -> None:
    site_new = tmp_path / "new"
    (site_new / "vllm" / "models").mkdir(parents=True)
    (site_new / "vllm" / "__init__.py").write_text("")
    (site_new / "vllm" / "models" / "old_path.py").write_text('e = Linear(prefix=f"{prefix}.e_proj")\n')
    entry = {"id": "prefix-fix", "kind": "upstream", "title": "t", "fixes": {"symptom": "s", "error": "E"},
             "upstream": ["https://example.invalid/1"], "files": ["vllm/models/new_path.py"],
             "probe": {"files": ["vllm/models/new_path.py", "vllm/models/old_path.py"],
                       "fixed": [r'prefix=f"\{prefix\}\.e_proj"']}, "verified_in": ["0.33.0"]}
    manifest = load_manifest(write_manifest(tmp_path / "m", [entry], {}))
    report = check_patches(list(manifest.patches), find_target(site_new))[0]
    assert (report.status, report.files) == ("upstream", ("vllm/models/old_path.py",))  # found at the alternative
    (site_new / "vllm" / "models" / "old_path.py").write_text("e = Linear()\n")
    report = check_patches(list(manifest.patches), find_target(site_new))[0]
    assert report.status == "not-applicable" and "MISSING" in report.detail and "0.33.0" in report.detail
    (site_new / "vllm" / "models" / "old_path.py").unlink()
    report = check_patches(list(manifest.patches), find_target(site_new))[0]
    assert report.status == "not-applicable" and "none of" in report.detail


def test_source_tree_without_record_uses_the_diff_both_ways(tmp_path: Path) -> None:
    synth = build_synth(tmp_path)
    tree = tmp_path / "tree"
    for rel, text in {"vllm/__init__.py": "", **synth.original}.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    before = snapshot(tree)
    assert statuses(synth, tree) == {"alpha-fix": "applicable", "beta-fix": "applicable"}  # version unknown: fits
    manifest, target = load_manifest(synth.manifest), find_target(tree)
    apply_patches(manifest, target)
    assert statuses(synth, tree) == {"alpha-fix": "applied", "beta-fix": "applied"}
    (tree / "vllm" / "beta.py").write_text(synth.patched["vllm/beta.py"].replace("VALUE_BETA_21", "X"))
    assert statuses(synth, tree)["beta-fix"] == "conflict"
    (tree / "vllm" / "beta.py").write_text(synth.patched["vllm/beta.py"])
    revert_patches(manifest, target)
    assert {k: v for k, v in snapshot(tree).items() if not k.startswith(".dsv4setup-backup")} == before


def test_forward_run_on_a_patched_file_fails_instead_of_silently_reversing(synth: Synth) -> None:
    """GNU patch --batch alone would take an applied patch as reversed and undo it."""
    diff = synth.manifest.parent / "alpha-fix" / "vllm-0.33.diff"
    patched = {"vllm/alpha.py": synth.patched["vllm/alpha.py"].encode()}
    assert not run_diff(diff, patched).ok
    undone = run_diff(diff, patched, reverse=True)
    assert undone.ok and undone.files["vllm/alpha.py"] == synth.original["vllm/alpha.py"].encode()
    assert not run_diff(diff, {"vllm/alpha.py": synth.original["vllm/alpha.py"].encode()}, reverse=True).ok



@pytest.mark.parametrize(("code", "status", "detail"), [
    ("def compose_draft_hf_overrides(x):\n    self.draft_model_config = ModelConfig(model=m)\n", "not-applicable",
     "NEEDED (vllm/config/speculative.py has the unfixed code) but there is no diff for vllm 0.34.0"),
    ("def compose_draft_hf_overrides(x):\n    self.draft_model_config = ModelConfig(hf_config_path=p)\n",
     "upstream", "vllm 0.34.0 already has the fix"),
    ("class SpeculativeConfig:\n    pass\n", "not-applicable", "the code this fix is about is not there"),
])
def test_shipped_probe_tells_needed_from_upstream_on_an_unpinned_vllm(tmp_path: Path, code: str, status: str,
                                                                     detail: str) -> None:
    site = make_site_packages(tmp_path / "s", {"vllm/config/speculative.py": code}, version="0.34.0")
    report = check_patches([load_manifest().get("mtp-draft-hf-config-path")], find_target(site))[0]
    assert report.status == status and detail in report.detail
