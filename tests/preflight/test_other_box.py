"""`doctor --snapshot F` plans for the other machine: the serve argv, its env and the disk check name one
workdir there (--target-workdir, else the one the snapshot was taken for, else `$WORKDIR`), never this
machine's (issue 26), through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dsv4setup.cli import main
from dsv4setup.core.jsonschemas import validate_document

SNAPSHOT = Path(__file__).parent / "fixtures" / "h200-x8-nvlink.json"  # taken for /data/dsv4


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    with pytest.raises(SystemExit) as info:
        main(["doctor", *args, "--json"])
    doc = json.loads(capsys.readouterr().out)
    validate_document(doc)
    return int(info.value.code or 0), doc


def paths_of(doc: dict[str, Any]) -> list[str]:
    rec = doc["recommendation"]
    values = [*rec["serve_args"], *rec["env"].values()]
    return [v for v in values if v.startswith(("/", "$"))]


def disk(doc: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in doc["checks"] if c["id"] == "host.disk_workdir")


def test_the_plan_and_the_disk_check_name_the_snapshots_workdir_not_this_one(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, doc = doctor(capsys, "--snapshot", str(SNAPSHOT), "--workdir", str(tmp_path))
    assert doc["workdir"] == "/data/dsv4" and doc["workdir_chosen_by"] == "the workdir the snapshot was taken for"
    assert paths_of(doc) and all(p.startswith("/data/dsv4/") for p in paths_of(doc)), paths_of(doc)
    assert str(tmp_path) not in json.dumps(doc["recommendation"])
    assert disk(doc)["status"] == "pass" and "free at /data/dsv4," in disk(doc)["summary"]


def test_target_workdir_moves_both(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, doc = doctor(capsys, "--snapshot", str(SNAPSHOT), "--workdir", str(tmp_path), "--target-workdir", "/srv/dsv4")
    assert doc["workdir"] == "/srv/dsv4" and doc["workdir_chosen_by"] == "--target-workdir"
    assert paths_of(doc) and all(p.startswith("/srv/dsv4/") for p in paths_of(doc)), paths_of(doc)
    assert disk(doc)["status"] == "warn" and disk(doc)["summary"] == "free space at /srv/dsv4 unknown"
    assert disk(doc)["fix"] == "check `df -h /srv/dsv4`"


def test_a_snapshot_without_a_workdir_gets_the_placeholder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    snap = json.loads(SNAPSHOT.read_text())
    snap["host"]["workdir"] = ""
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(snap))
    _, doc = doctor(capsys, "--snapshot", str(path), "--workdir", str(tmp_path))
    assert doc["workdir"] == "$WORKDIR" and all(p.startswith("$WORKDIR/") for p in paths_of(doc)), paths_of(doc)
    assert disk(doc)["summary"] == "free space at $WORKDIR unknown"


def test_target_workdir_needs_a_snapshot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--workdir", str(tmp_path), "--target-workdir", "/srv/x", "--json"])
    error = json.loads(capsys.readouterr().out)
    assert info.value.code == 2 and "--target-workdir goes with --snapshot" in error["message"]
