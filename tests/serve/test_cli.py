"""The serve commands' CLI: JSON documents valid against their schemas, exit codes, no-op down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dsv4setup.core.workdir import Workdir

from .conftest import validate


def dsv4setup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsv4setup", *args], capture_output=True, text=True, timeout=120)


def test_tiny_model_command_writes_the_checkpoint_and_reports_it(tmp_path: Path) -> None:
    result = dsv4setup("tiny-model", str(tmp_path / "tiny"), "--seed", "3", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate(doc, "tiny-model")
    assert doc["path"] == str(tmp_path / "tiny") and doc["seed"] == 3 and doc["answer_word"] == "ok"
    assert doc["kind"] == "easy"
    assert {f["name"] for f in doc["files"]} >= {"config.json", "model.safetensors", "tokenizer.json"}
    human = dsv4setup("tiny-model", str(tmp_path / "again"))
    assert human.returncode == 0 and "answers 'ok'" in human.stderr and human.stdout == ""


def test_tiny_model_varied_kind_and_an_unknown_kind_is_a_usage_error(tmp_path: Path) -> None:
    result = dsv4setup("tiny-model", str(tmp_path / "varied"), "--kind", "varied", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate(doc, "tiny-model")
    assert doc["kind"] == "varied" and doc["answer_word"] is None
    easy = json.loads(dsv4setup("tiny-model", str(tmp_path / "easy"), "--json").stdout)
    sha = {d["kind"]: {f["name"]: f["sha256"] for f in d["files"]} for d in (doc, easy)}
    assert sha["varied"]["model.safetensors"] != sha["easy"]["model.safetensors"]
    assert sha["varied"]["tokenizer.json"] == sha["easy"]["tokenizer.json"]  # one tokenizer for both
    bad = dsv4setup("tiny-model", str(tmp_path / "bad"), "--kind", "hard", "--json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["reference"] == "usage" and "varied" in bad.stdout
    assert not (tmp_path / "bad").exists()


def test_down_with_nothing_running_is_a_clean_no_op(workdir: Workdir) -> None:
    result = dsv4setup("down", "--workdir", str(workdir.root), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate(doc, "down")
    assert doc["was_running"] is False and doc["pids"] == []
    human = dsv4setup("down", "--workdir", str(workdir.root))
    assert human.returncode == 0 and "no server is running" in human.stderr


def test_smoke_without_a_served_model_is_a_usage_error_naming_the_missing_step(workdir: Workdir) -> None:
    result = dsv4setup("smoke", "--workdir", str(workdir.root), "--profile", "cpu-tiny", "--json")
    assert result.returncode == 2, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "dsv4setup.error/2" and "needs step serve" in doc["message"]
