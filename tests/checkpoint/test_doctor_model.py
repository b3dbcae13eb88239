"""`dsv4setup doctor --model ORG/NAME` lints a hub checkpoint before any download (local hub server)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dsv4setup.cli import main
from dsv4setup.core.jsonschemas import validate_document
from tests.checkpoint.ckptgen import CkptSpec, write_v4_checkpoint
from tests.checkpoint.hubserver import HubServer
from tests.conftest import REPO_ROOT

SNAPSHOT = REPO_ROOT / "tests" / "preflight" / "fixtures" / "h200-x8-nvlink.json"


def doctor(capsys: pytest.CaptureFixture[str], workdir: Path, model: str) -> tuple[int, dict]:
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--snapshot", str(SNAPSHOT), "--workdir", str(workdir), "--model", model, "--json"])
    doc = json.loads(capsys.readouterr().out)
    validate_document(doc)
    return int(info.value.code or 0), doc


def model_checks(doc: dict) -> dict[str, str]:
    return {c["id"]: c["status"] for c in doc["checks"] if c["id"].startswith("model.")}


def test_doctor_model_mtp_checkpoint_passes_and_stripped_one_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], serve_hub: Callable[..., HubServer]) -> None:
    good = write_v4_checkpoint(tmp_path / "good", CkptSpec(mtp="bf16"))
    stripped = write_v4_checkpoint(tmp_path / "stripped", CkptSpec(mtp="none", declare_mtp=True))
    hub = serve_hub({"org/good": good, "org/stripped": stripped})
    code, doc = doctor(capsys, tmp_path / "wd", "org/good")
    checks = model_checks(doc)
    assert code == 0 and checks["model.mtp_declared"] == "pass" and checks["model.mtp_tensors"] == "pass"
    code, doc = doctor(capsys, tmp_path / "wd", "org/stripped@main")
    assert code == 1 and model_checks(doc)["model.mtp_tensors"] == "fail" and not doc["ok"]
    code, doc = doctor(capsys, tmp_path / "wd", "org/missing")
    assert code == 1 and model_checks(doc) == {"model.remote": "fail"}
    assert hub.bytes_served() < sum(f.stat().st_size for f in good.iterdir()) * 2  # headers, not whole shards


def test_doctor_model_bad_spelling_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--snapshot", str(SNAPSHOT), "--workdir", str(tmp_path), "--model", "no-slash"])
    assert info.value.code == 2 and "ORG/NAME" in capsys.readouterr().err
