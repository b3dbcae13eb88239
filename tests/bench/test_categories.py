"""Acceptance per category: each category of a prompt set is its own row; the summary, the winner, the report,
the chart and compare keep them apart (pure functions over rows shaped like a real cpu-tiny run's)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from dsv4setup.bench.best import choose_best, parse_weights
from dsv4setup.bench.compare import compare
from dsv4setup.bench.report import acceptance_by_category, summary, write_chart
from dsv4setup.core.errors import UsageError
from dsv4setup.core.jsonschemas import validate_document

from .conftest import load_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# (k, category) -> (output tok/s, acceptance rate, acceptance length)
MEASURED = {(0, "code"): (100.0, None, None), (1, "code"): (150.0, 0.8, 1.8), (2, "code"): (170.0, 0.7, 2.4),
            (0, "chat"): (100.0, None, None), (1, "chat"): (130.0, 0.6, 1.6), (2, "chat"): (110.0, 0.3, 1.6)}


def category_rows() -> list[dict[str, Any]]:
    by_k = {r["k"]: r for r in load_rows("cpu-tiny-results.jsonl")}
    rows = []
    for (k, category), (tps, rate, length) in MEASURED.items():
        row = copy.deepcopy(by_k[k])
        row["category"] = category
        row["metrics"].update(output_throughput=tps, acceptance_rate=rate, acceptance_length=length)
        row["fingerprint"]["workload"].update(dataset="mix", dataset_sha256="d" * 64, input_len=None)
        rows.append(row)
    return rows


def test_category_rows_validate_and_the_summary_compares_each_category_with_its_own_k0() -> None:
    rows = category_rows()
    for row in rows:
        validate_document(row)
    lines = {(x["category"], x["k"]): x for x in summary(rows)}
    assert lines[("code", 2)]["speedup"] == 1.7 and lines[("chat", 2)]["speedup"] == 1.1
    assert [(x["category"], x["k"]) for x in summary(rows)][:3] == [("code", 0), ("code", 1), ("code", 2)]


def test_the_winner_is_the_geometric_mean_over_categories_and_must_succeed_in_each() -> None:
    rows = category_rows()
    best = choose_best(rows)["short"]
    assert best.k == 1 and best.scores[1] == pytest.approx((150 * 130) ** 0.5)  # k=2: sqrt(170*110) < k=1
    assert best.acceptance[1] == 0.7 and best.concurrency == [1]
    broken = [dict(r, status="failed", metrics=None, error={"message": "x", "fix": None, "known_failure": None,
                                                             "excerpt": None, "phase": "bench"})
              if (r["k"], r["category"]) == (1, "chat") else r for r in rows]
    again = choose_best(broken)["short"]
    assert again.scores[1] is None and again.k == 2  # a k that failed in one category is no choice


def test_the_report_shows_acceptance_by_category_for_each_k_and_the_chart_is_drawn(tmp_path: Path) -> None:
    table = acceptance_by_category(summary(category_rows()))
    assert table[2] == "| category | concurrency | k=1 | k=2 |"
    assert "| code | 1 | 80.0%, 1.80 | 70.0%, 2.40 |" in table and "| chat | 1 | 60.0%, 1.60 | 30.0%, 1.60 |" in table
    write_chart(tmp_path / "chart.png", category_rows(), "categories")
    assert (tmp_path / "chart.png").read_bytes()[:8] == PNG_MAGIC


def test_compare_lines_up_categories_one_by_one(tmp_path: Path) -> None:
    rows = category_rows()
    doc = compare(rows, rows[:3], tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    validate_document(doc)
    assert doc["counts"] == {"cells": 6, "matched": 3, "mismatched": 0, "only_a": 3, "only_b": 0}
    assert {(c["category"], c["k"]) for c in doc["cells"] if c["matched"]} == {("code", 0), ("code", 1), ("code", 2)}


def test_weights_move_the_choice_and_the_categories_that_would_pick_another_k_are_named() -> None:
    plain = choose_best(category_rows())["short"]
    assert plain.k == 1 and plain.by_category == {"code": 2, "chat": 1} and plain.other_k == {"code": 2}
    code_heavy = choose_best(category_rows(), parse_weights("code=3", ["code", "chat"]))["short"]
    assert code_heavy.k == 2 and code_heavy.other_k == {"chat": 1}
    assert code_heavy.scores[2] == pytest.approx(math.exp((3 * math.log(170) + math.log(110)) / 4))
    assert code_heavy.to_dict()["weights"] == {"code": 3.0}


@pytest.mark.parametrize(("text", "categories", "said"), [
    ("code=3", [None], "--weights needs a prompt set with categories"),
    ("nope=1", ["code", "chat"], "the prompt set has no category 'nope' (it has: code, chat)"),
    ("code=-1", ["code", "chat"], "'code=-1' is not CATEGORY=WEIGHT"),
    ("code", ["code", "chat"], "'code' is not CATEGORY=WEIGHT"),
    ("code=0,chat=0", ["code", "chat"], "every category weighs 0"),
])
def test_bad_weights_are_usage_errors(text: str, categories: list[str | None], said: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_weights(text, categories)
    assert said in caught.value.message
