"""`dsv4setup patches status|apply|revert`: exit codes, one JSON document valid against the schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import dsv4setup.patches.manifest as manifest_mod
from dsv4setup.cli import main
from dsv4setup.core.lock import workdir_lock
from dsv4setup.core.resources import package_file
from dsv4setup.core.workdir import Workdir
from tests.patches.conftest import Synth
from tests.patches.helpers import snapshot

SCHEMA = json.loads(package_file("schemas", "patches.schema.json").read_text())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def doc_of(out: str) -> dict[str, Any]:
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    return doc


@pytest.fixture
def shipped_as(synth: Synth, monkeypatch: pytest.MonkeyPatch) -> Synth:
    """The CLI reads the synthetic manifest in place of the shipped one (data path only)."""
    monkeypatch.setattr(manifest_mod, "default_manifest_path", lambda: synth.manifest)
    return synth


def test_status_apply_revert_json(shipped_as: Synth, capsys: pytest.CaptureFixture[str]) -> None:
    site = str(shipped_as.site)
    code, out, _ = run(capsys, "patches", "status", "--target", site, "--json")
    doc = doc_of(out)
    assert code == 0 and doc["ok"] and doc["action"] == "status" and doc["changed"] == []
    assert doc["target"] == {"path": site, "kind": "site-packages", "distribution": "vllm", "version": "0.33.0"}
    assert [(p["id"], p["state"], p["status"], p["files"]) for p in doc["patches"]] == [
        ("alpha-fix", "applicable", "warn", ["vllm/alpha.py"]), ("beta-fix", "applicable", "warn", ["vllm/beta.py"])]
    assert doc["patches"][1]["command"] == f"dsv4setup patches apply beta-fix --target {site}"
    assert doc["patches"][1]["command"] in doc["patches"][1]["fix"]
    code, out, _ = run(capsys, "patches", "apply", "beta-fix", "--target", site, "--json")
    doc = doc_of(out)
    assert code == 0 and doc["changed"] == ["beta-fix"]
    assert {p["id"]: (p["state"], p["status"], p["fix"]) for p in doc["patches"]} == {
        "beta-fix": ("applied", "pass", None)}
    code, out, _ = run(capsys, "patches", "revert", "--target", site, "--json")
    assert code == 0 and doc_of(out)["changed"] == ["beta-fix"]


def test_human_output_is_a_table_and_progress_on_stderr(shipped_as: Synth, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "patches", "apply", "--target", str(shipped_as.site))
    assert code == 0 and "alpha-fix" in out and "applied" in out
    assert "applied: alpha-fix, beta-fix" in err and "patched " in err


def test_conflict_status_exits_1_and_apply_changes_nothing(shipped_as: Synth,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (shipped_as.site / "vllm" / "alpha.py").write_text("edited by hand\n")
    before = snapshot(shipped_as.site)
    code, out, _ = run(capsys, "patches", "status", "--target", str(shipped_as.site), "--json")
    doc = doc_of(out)
    conflict = doc["patches"][0]
    assert code == 1 and not doc["ok"] and (conflict["state"], conflict["status"]) == ("conflict", "fail")
    assert "install --force-reinstall --no-deps vllm==0.33.0" in conflict["fix"] and "alpha.py" in conflict["summary"]
    code, out, _ = run(capsys, "patches", "apply", "--target", str(shipped_as.site), "--json")
    error = json.loads(out)
    assert code == 1 and error["schema"] == "dsv4setup.error/2" and "vllm/alpha.py" in error["message"]
    assert "install --force-reinstall --no-deps vllm==0.33.0" in error["fix"] and "dsv4setup up" in error["fix"]
    code, _out, err = run(capsys, "patches", "apply", "--target", str(shipped_as.site))
    assert code == 1 and "conflict, nothing changed" in err and "Traceback" not in err
    assert snapshot(shipped_as.site) == before


def test_bad_target_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "patches", "status", "--target", str(tmp_path), "--json")
    assert code == 2 and "no vLLM here" in json.loads(out)["message"]


def test_default_target_is_the_workdir_venv_and_apply_takes_the_lock(shipped_as: Synth, workdir: Workdir,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(shipped_as.site, workdir.venv_dir / "lib" / "python3.11" / "site-packages")
    code, out, _ = run(capsys, "patches", "status", "--workdir", str(workdir.root), "--json")
    assert code == 0 and doc_of(out)["target"]["path"].startswith(str(workdir.venv_dir))
    with workdir_lock(workdir.lock_file, "up"):
        code, out, _ = run(capsys, "patches", "apply", "--workdir", str(workdir.root), "--json")
    assert code == 3 and json.loads(out)["error"] == "LockHeldError"
    code, out, _ = run(capsys, "patches", "apply", "--workdir", str(workdir.root), "--json")
    assert code == 0 and doc_of(out)["changed"] == ["alpha-fix", "beta-fix"]
