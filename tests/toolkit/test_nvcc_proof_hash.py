"""The nvcc compile proof hashes the nvcc binary only when its stat moved; any rewrite is still seen
(its ctime moves even when the mtime is set back), so a changed nvcc is compiled with again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dsv4setup.toolkit.nvcc import proven_compile
from tests.toolkit.fakes import calls, write_fake_nvcc


def test_a_rewritten_nvcc_with_its_old_mtime_is_hashed_and_compiled_with_again_with_fake_nvcc(
        tmp_path: Path) -> None:
    record, proofs = tmp_path / "nvcc-calls.jsonl", tmp_path / "nvcc-proofs.json"
    nvcc = write_fake_nvcc(tmp_path / "cuda" / "bin" / "nvcc", release="13.1", record=record)

    def compiles() -> int:
        return sum(1 for call in calls(record) if "-arch=sm_120a" in call)

    assert proven_compile(nvcc, "sm_120a", proofs).ok and compiles() == 1
    hashed = json.loads(proofs.read_text())["hashed"]
    assert list(hashed) == [str(nvcc.resolve())]
    assert proven_compile(nvcc, "sm_120a", proofs).ok and compiles() == 1  # proven: same stat, no hash, no compile
    st = nvcc.stat()
    write_fake_nvcc(nvcc, release="13.1", arches=("sm_90a",), record=record)  # lost sm_120a
    os.utime(nvcc, ns=(st.st_atime_ns, st.st_mtime_ns))  # its mtime set back: ctime still moved
    assert not proven_compile(nvcc, "sm_120a", proofs).ok and compiles() == 2
    assert json.loads(proofs.read_text())["hashed"] != hashed
