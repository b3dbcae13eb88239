"""Lossless: greedy text with k>0 against k=0, prompt by prompt; one generation changed on purpose proves that
the position and the excerpts point at the change."""

from __future__ import annotations

import json
from pathlib import Path

from dsv4setup.bench.lossless import (
    beyond_tolerance,
    compare_texts,
    excerpt,
    first_difference,
    generated_texts,
    lossless,
    totals,
)
from dsv4setup.bench.report import lossless_lines

REFERENCE = ["def add(a, b):\n    return a + b\n", "The capital of Australia is Canberra.", "ok ok ok"]


def test_identical_texts_are_lossless_and_one_changed_generation_is_found_where_it_changed() -> None:
    assert compare_texts(REFERENCE, list(REFERENCE)) == {"identical": 3, "total": 3, "differing": []}
    changed = list(REFERENCE)
    changed[1] = changed[1].replace("Canberra", "Sydney")  # the change made on purpose
    result = compare_texts(REFERENCE, changed, ["def add", "What is the capital of Australia?", "Hi"])
    assert (result["identical"], result["total"]) == (2, 3)
    [d] = result["differing"]
    assert d["index"] == 1 and d["prompt"] == "What is the capital of Australia?"
    assert d["position"] == REFERENCE[1].index("Canberra")
    assert d["reference"] == "…ustralia is Canberra." and d["candidate"] == "…ustralia is Sydney."


def test_edge_cases_of_the_difference() -> None:
    assert first_difference("abc", "abc") is None and first_difference("abc", "abd") == 2
    assert first_difference("ok ok", "ok ok ok") == 5  # one is a prefix of the other: where the shorter ends
    assert excerpt("x" * 100, 50) == "…" + "x" * 48 + "…"
    failed = compare_texts(["a", "b"], ["a", None])  # a failed request is never counted identical
    assert failed["identical"] == 1 and failed["differing"][0]["candidate"] is None
    assert compare_texts(["a"], ["a", "extra"])["total"] == 2


def test_cells_are_compared_with_k0_of_the_same_category_and_the_report_names_them(tmp_path: Path) -> None:
    def row(k: int, category: str, texts: list[str] | None) -> dict:
        name = f"k{k}-{category}.json"
        (tmp_path / name).write_text(json.dumps({"output_throughput": 1.0, **(
            {"generated_texts": texts} if texts is not None else {})}))
        return {"k": k, "shape": "short", "concurrency": 1, "category": category, "status": "ok", "raw_result": name}

    rows = [row(0, "code", ["x = 1", "y = 2"]), row(0, "chat", ["hello there"]),
            row(1, "code", ["x = 1", "y = 3"]), row(1, "chat", ["hello there"]), row(2, "chat", None)]
    entries = lossless(rows, lambda r: generated_texts(tmp_path / r["raw_result"]),
                       lambda c: {"code": ["a", "b"], "chat": ["hi"]}[c or ""])
    assert [(e["k"], e["category"], e["identical"], e["total"]) for e in entries] == [(1, "code", 1, 2),
                                                                                     (1, "chat", 1, 1)]
    assert totals(entries) == {"1": {"identical": 2, "total": 3}}  # k=2 saved no texts: not compared
    lines = lossless_lines({"by_k": totals(entries), "cells": entries})
    assert "- k=1: lossless 2/3" in lines
    assert '  - k=1 `short` c=1 code, prompt #1 ("b"): first difference at character 4: k=0 "y = 2", k=1 "y = 3"' \
        in lines


def test_a_k_beyond_the_profiles_tolerance_is_named_and_an_unmeasured_tolerance_fails_nothing() -> None:
    by_k = {"1": {"identical": 50, "total": 50}, "2": {"identical": 48, "total": 50}}
    assert beyond_tolerance(by_k, 0.0) == [2] and beyond_tolerance(by_k, 0.04) == []
    assert beyond_tolerance(by_k, None) == []
    lines = lossless_lines({"by_k": by_k, "tolerance": 0.0, "beyond": [2], "cells": []})
    assert "- k=2: lossless 48/50 — **beyond the tolerance**" in lines and "Tolerance (share of prompts that may " \
        "differ): 0% (bench.lossless_tolerance)" in lines
    assert "unmeasured for this profile" in lossless_lines({"by_k": by_k, "tolerance": None, "beyond": [],
                                                           "cells": []})[2]
