"""Lining up two machines' matrices, and choosing (and writing) the best k."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from dsv4setup.bench.best import apply_best, choose_best, pick_for_profile
from dsv4setup.bench.compare import compare
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.resolve import resolve_profile

from .conftest import changed, load_rows

A, B = Path("a/results.jsonl"), Path("b/results.jsonl")


def real_runs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two real runs of the cpu-tiny matrix on one machine (k 0, 1, 2)."""
    rows = load_rows("cpu-tiny-results.jsonl")
    first = rows[0]["run_id"]
    return [r for r in rows if r["run_id"] == first], [r for r in rows if r["run_id"] != first]


def on_other_hardware(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        row = changed(row, "hardware.gpus", [{"name": "NVIDIA GH200 480GB", "sm": "9.0"}] * 2)
        row = changed(row, "hardware.interconnect", "c2c")
        out.append(changed(row, "driver", {"version": "580.65.06", "cuda": "13.0"}))
    return out


def test_two_runs_of_the_same_setup_are_matched_despite_their_dates() -> None:
    first, second = real_runs()
    doc = compare(first, second, A, B)
    validate_document(doc)
    assert doc["counts"] == {"cells": 3, "matched": 3, "mismatched": 0, "only_a": 0, "only_b": 0}
    assert [(c["shape"], c["concurrency"], c["k"]) for c in doc["cells"]] == [("short", 1, 0), ("short", 1, 1),
                                                                              ("short", 1, 2)]
    by_k = {c["k"]: c for c in doc["cells"]}
    assert by_k[2]["ratio"] == pytest.approx(by_k[2]["b"]["output_throughput"] / by_k[2]["a"]["output_throughput"],
                                             abs=1e-3)
    assert by_k[0]["a"]["acceptance_rate"] is None and by_k[1]["a"]["acceptance_rate"] == 1.0


def test_hardware_and_driver_differences_are_reported_but_not_flagged() -> None:
    first, second = real_runs()
    doc = compare(first, on_other_hardware(second), A, B)
    validate_document(doc)
    assert doc["counts"]["matched"] == 3 and doc["differing_keys"] == []
    keys = {d["key"] for d in doc["cells"][0]["hardware_differences"]}
    assert {"hardware.gpus", "hardware.interconnect", "driver.version", "driver.cuda"} <= keys


@pytest.mark.parametrize(("dotted", "value"), [
    ("vllm.version", "0.33.0"),
    ("vllm.commit", "f00dbabe"),
    ("patches.applied", ["mtp-draft-hf-config-path"]),
    ("checkpoint.revision", "1234abcd"),
    ("profile.overrides", {"serve.max_model_len": 131072}),
    ("workload.num_prompts", 64),
])
def test_a_setup_difference_besides_hardware_is_flagged_with_both_values(dotted: str, value: Any) -> None:
    first, second = real_runs()
    other = [changed(r, dotted, value) for r in on_other_hardware(second)]
    doc = compare(first, other, A, B)
    validate_document(doc)
    assert doc["counts"]["matched"] == 0 and doc["counts"]["mismatched"] == 3
    diffs = doc["cells"][0]["differences"]
    assert diffs and all(d["key"].startswith(dotted) for d in diffs), diffs
    assert doc["differing_keys"] and all(k.startswith(dotted) for k in doc["differing_keys"])
    assert not any(d["key"].startswith(("hardware", "driver", "date")) for d in diffs)


def test_cells_in_one_file_only_and_the_latest_row_per_cell() -> None:
    first, second = real_runs()
    doc = compare([*first, *second], [r for r in second if r["k"] != 2], A, B)
    by_k = {c["k"]: c for c in doc["cells"]}
    assert by_k[2]["b"] is None and not by_k[2]["matched"] and doc["counts"]["only_a"] == 1
    assert by_k[0]["a"]["run_id"] == second[0]["run_id"]  # the later run of file A stands for the cell


def row(k: int, concurrency: int, tps: float | None, acceptance: float | None = None) -> dict[str, Any]:
    """A row for the choice only: status, metrics and the cell (the rest does not take part)."""
    base = copy.deepcopy(load_rows("cpu-tiny-results.jsonl")[0])
    base.update(k=k, concurrency=concurrency, shape="short")
    if tps is None:
        base.update(status="failed", metrics=None, error={"message": "boom", "fix": None, "known_failure": None,
                                                          "excerpt": None, "phase": "serve"})
    else:
        base["metrics"] = {**base["metrics"], "output_throughput": tps, "acceptance_rate": acceptance}
    return base


def test_the_best_k_has_the_highest_throughput_and_a_tie_goes_to_the_lower_k() -> None:
    best = choose_best([row(0, 1, 100.0), row(1, 1, 150.0, 0.9), row(2, 1, 150.004, 0.8), row(3, 1, 120.0, 0.6)])
    choice = best["short"]
    assert choice.k == 1 and choice.score == 150.0  # 150.004 rounds to the same 150.00
    assert choice.to_dict()["scores"] == {"0": 100.0, "1": 150.0, "2": 150.0, "3": 120.0}
    assert choose_best([row(0, 1, 100.0), row(2, 1, 151.0)])["short"].k == 2


def test_a_k_that_fails_at_any_concurrency_cannot_win() -> None:
    rows = [row(0, 1, 100.0), row(0, 4, 300.0), row(1, 1, 140.0, 0.9), row(1, 4, 390.0, 0.9),
            row(3, 1, 190.0, 0.7), row(3, 4, None)]
    choice = choose_best(rows)["short"]
    assert choice.k == 1 and choice.scores[3] is None
    assert choice.score == pytest.approx((140.0 * 390.0) ** 0.5)  # geometric mean over the levels
    assert choose_best([row(1, 1, None)]) == {}


def test_the_default_shape_decides_which_winner_is_served() -> None:
    long_rows = [dict(r, shape="long") for r in (row(0, 1, 50.0), row(3, 1, 90.0, 0.7))]
    choices = choose_best([row(0, 1, 100.0), row(1, 1, 150.0, 0.9), *long_rows])
    assert pick_for_profile(choices, "short", ["long", "short"]).k == 1
    assert pick_for_profile(choices, "absent", ["long", "short"]).k == 3


def test_apply_best_writes_the_override_with_evidence_and_the_next_resolve_serves_it(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "wd").ensure()
    workdir.overrides_file.write_text("# my settings\nprofile: cpu-tiny\nserve:\n  port: 8123  # mine\n")
    before = resolve_profile(workdir, None, [])
    assert before.profile.spec.num_speculative_tokens == 1
    choice = choose_best([row(0, 1, 100.0), row(1, 1, 150.0, 0.9), row(2, 1, 170.0, 0.8)])["short"]
    path = apply_best(workdir, choice, {"run_id": "r1", "results": "/wd/bench/results.jsonl"})
    assert path == workdir.overrides_file
    text = path.read_text()
    assert "# my settings" in text and "port: 8123  # mine" in text  # the user's file is kept as written
    doc = yaml.safe_load(text)
    assert doc["spec"]["num_speculative_tokens"] == 2
    evidence = doc["evidence"]["spec.num_speculative_tokens"]
    assert evidence["k"] == 2 and evidence["run_id"] == "r1" and evidence["scores"]["2"] == 170.0
    assert evidence["written_at"]
    after = resolve_profile(workdir, None, [])
    assert after.profile.spec.num_speculative_tokens == 2
    assert after.origins["spec.num_speculative_tokens"].startswith("workdir:")
