"""vLLM's files checked against its RECORD at stat speed: an untouched install answers from the proof
without reading RECORD's hashes again; a file edited in place, replaced, or removed is still caught."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from dsv4setup.vllm.verify import record_drift


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    files = {"vllm/__init__.py": "__version__ = '0.1.0'\n", "vllm/model.py": "WEIGHTS = 1\n"}
    rows = []
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{rel},sha256={digest},{len(text)}")
    info = site / "vllm-0.1.0.dist-info"
    info.mkdir()
    (info / "RECORD").write_text("\n".join([*rows, "vllm-0.1.0.dist-info/RECORD,,"]) + "\n")
    return site


def test_the_proof_answers_until_a_file_moves(tmp_path: Path) -> None:
    site, proof = _site(tmp_path), tmp_path / "proof.json"
    assert record_drift(site, "vllm", proof) is None
    assert set(json.loads(proof.read_text())["files"]) == {"vllm/__init__.py", "vllm/model.py"}
    assert record_drift(site, "vllm", proof) is None  # from the proof: every stat as it was
    model = site / "vllm" / "model.py"
    model.write_text("WEIGHTS = 2\n")  # in place, same size
    assert record_drift(site, "vllm", proof) == f"{model} differs from vllm's RECORD (changed after the install)"
    model.write_text("WEIGHTS = 1\n")  # the wheel's bytes again: hashed, accepted, proven anew
    assert record_drift(site, "vllm", proof) is None
    model.unlink()
    assert record_drift(site, "vllm", proof) == f"{model} of vllm is missing"


def test_a_proof_of_another_record_is_not_used(tmp_path: Path) -> None:
    site, proof = _site(tmp_path), tmp_path / "proof.json"
    assert record_drift(site, "vllm", proof) is None
    record = site / "vllm-0.1.0.dist-info" / "RECORD"
    record.write_text(record.read_text().replace("vllm/model.py,sha256=", "vllm/model.py,sha256=AAAA"))
    assert record_drift(site, "vllm", proof) == f"{site / 'vllm' / 'model.py'} differs from vllm's RECORD " \
                                                "(changed after the install)"
