"""AGENTS.md's "doctor without a GPU" table says what doctor prints: doctor runs through the CLI on this
CPU box (the real probe) and on the no-GPU fixtures, plainly and with `--profile cpu-tiny`, and each
check's status must be the one the table's row gives for that column."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dsv4setup.cli import main
from tests.conftest import REPO_ROOT

FIXTURES = Path(__file__).parent / "fixtures"
COLUMNS = ("no NVIDIA driver", "a driver, no GPU", "`--profile cpu-tiny`")


def table() -> dict[str, dict[str, str]]:
    """check id -> {column: status}, from the table under `## doctor without a GPU`."""
    text = (REPO_ROOT / "AGENTS.md").read_text().split("## doctor without a GPU", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert tuple(header[1:]) == COLUMNS
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = dict(zip(COLUMNS, cells[1:], strict=True))
    return rows


def doctor(capsys: pytest.CaptureFixture[str], workdir: Path, *args: str) -> dict[str, Any]:
    with pytest.raises(SystemExit):
        main(["doctor", "--workdir", str(workdir), *args, "--json"])
    return dict(json.loads(capsys.readouterr().out))


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in doc["checks"]}


def driver_without_gpus(tmp_path: Path) -> Path:
    """The no-GPU fixture with a loaded driver (taken from a GPU box's fixture) that lists no GPU."""
    snap = json.loads((FIXTURES / "cpu-only.json").read_text())
    snap.update(driver=json.loads((FIXTURES / "h200-x1.json").read_text())["driver"])
    snap.pop("nvml_error")
    path = tmp_path / "driver-no-gpu.json"
    path.write_text(json.dumps(snap))
    return path


def test_the_table_matches_doctor_on_the_no_gpu_fixtures(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows = table()
    assert {"driver.present", "gpu.present", "host.profile"} <= set(rows)
    runs = {"no NVIDIA driver": ["--snapshot", str(FIXTURES / "cpu-only.json")],
            "a driver, no GPU": ["--snapshot", str(driver_without_gpus(tmp_path))],
            "`--profile cpu-tiny`": ["--snapshot", str(FIXTURES / "cpu-only.json"), "--profile", "cpu-tiny"]}
    for column, args in runs.items():
        found = statuses(doctor(capsys, tmp_path / "wd", *args))
        assert {c: found[c] for c in rows} == {c: row[column] for c, row in rows.items()}, column


def test_the_table_matches_doctor_on_this_cpu_box(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """This machine, probed for real: plain (judged for DeepSeek-V4-Flash), then as the demo."""
    rows = table()
    plain = doctor(capsys, tmp_path / "wd")
    if plain["snapshot"]["driver"] is not None:
        pytest.skip("this machine has an NVIDIA driver")
    assert not plain["ok"] and plain["recommendation"] is None
    assert {c: statuses(plain)[c] for c in rows} == {c: row["no NVIDIA driver"] for c, row in rows.items()}
    disk = next(c["summary"] for c in plain["checks"] if c["id"] == "host.disk_workdir")
    assert "needs 181.0 GB" in disk and "needs 181.0 GB" in (REPO_ROOT / "AGENTS.md").read_text()
    demo = doctor(capsys, tmp_path / "wd", "--profile", "cpu-tiny")
    assert {c: statuses(demo)[c] for c in rows} == {c: row["`--profile cpu-tiny`"] for c, row in rows.items()}
    demo_disk = next(c["summary"] for c in demo["checks"] if c["id"] == "host.disk_workdir")
    assert re.search(r"needs (\d+\.\d) GB", demo_disk) and "needs 181.0 GB" not in demo_disk
