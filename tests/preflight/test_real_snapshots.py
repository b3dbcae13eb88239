"""Snapshots captured on real GPU machines (`real-*.json`, written by scripts/gpu-check): scrubbed,
valid, and judged consistently with their hardware on every fast run. The scrubber itself is
proven on a hand-written fixture."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dsv4setup.preflight.report import build_report
from dsv4setup.preflight.scrub import SCRUBBED_HOST, scrub_snapshot
from dsv4setup.preflight.select import select_profile
from tests.preflight.conftest import REAL_FIXTURES, hardware_validator, load_fixture
from tests.preflight.consistency import verdict_problems

PLACEHOLDER_UUID = re.compile(r"^(GPU|MIG)-00000000-0000-0000-0000-\d{12}$")
ANY_UUID = re.compile(r"(GPU|MIG)-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def doctor(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What `dsv4setup doctor --snapshot` judges: the profile it selects for the machine (shipped or derived)."""
    return build_report(snapshot, select_profile(snapshot, None, use_workdir=False).judged()).to_doc()


def test_scrub_removes_host_name_uuids_serials_and_user_names_and_keeps_the_verdict() -> None:
    doc = load_fixture("h200-x8-nvlink")
    doc["host"]["hostname"] = "gpu-node-17.example.org"
    free = doc["host"]["disk_free_bytes"]
    doc["host"]["hf_cache"] = "/home/alice/.cache/huggingface/hub"
    free[doc["host"]["hf_cache"]] = free.pop(next(k for k in free if k.startswith("/home/")))
    doc["probe_notes"] = ["gpu0.power_limit_max_w on gpu-node-17.example.org: NVMLError_NotSupported",
                          f"gpu1.c2c: {doc['gpus'][1]['uuid']} NVMLError_NotSupported"]
    doc["gpus"][0]["serial"] = "1654922001234"
    before = json.dumps(doc)
    out = scrub_snapshot(doc)
    assert json.dumps(doc) == before  # the input is left alone
    text = json.dumps(out)
    assert "gpu-node-17" not in text and "alice" not in text and "1654922001234" not in text
    assert out["host"]["hostname"] == SCRUBBED_HOST and out["host"]["hf_cache"] == "/home/user/.cache/huggingface/hub"
    uuids = [g["uuid"] for g in out["gpus"]]
    assert all(PLACEHOLDER_UUID.match(u) for u in uuids) and len(set(uuids)) == len(uuids) == 8
    assert out["probe_notes"][1].startswith(f"gpu1.c2c: {uuids[1]} ")  # the same GPU keeps the same placeholder
    assert list(hardware_validator().iter_errors(out)) == []
    verdicts = [[(c.id, c.status) for c in build_report(d).checks] for d in (out, doc)]
    assert verdicts[0] == verdicts[1]


@pytest.mark.parametrize("path", REAL_FIXTURES, ids=lambda p: p.stem)
def test_real_snapshot_is_scrubbed_valid_and_judged_consistently(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert list(hardware_validator().iter_errors(doc)) == []
    assert doc["host"]["hostname"] == SCRUBBED_HOST
    assert [m.group(0) for m in ANY_UUID.finditer(json.dumps(doc)) if not PLACEHOLDER_UUID.match(m.group(0))] == []
    assert verdict_problems(doc, doctor(doc)) == []


def test_hand_written_fixtures_are_judged_consistently_too() -> None:
    """The consistency rules the live GPU test applies hold for the machines of the field notes."""
    for name in ("h200-x1", "h200-x8-nvlink", "rtx-pro-6000-maxq-x2", "l40s-x1", "gb10-x1"):
        doc = load_fixture(name)
        assert verdict_problems(doc, doctor(doc)) == [], name
