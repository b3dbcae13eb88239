"""Two machines' matrices side by side, by (shape, concurrency, k, category), with unmatched setups named.

Each file may hold several runs: the last row of each (shape, concurrency, k) stands for it.
A pair is "matched" when the fingerprints agree in everything but where and when
(hardware, driver, date); otherwise every differing key is listed with both values, so
"k=3 is faster on B" is never read off two different vLLM builds or workloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsv4setup.bench import COMPARE_SCHEMA
from dsv4setup.bench.fingerprint import WHERE_AND_WHEN, flatten, matched_part
from dsv4setup.core.errors import UsageError

Key = tuple[str, int, int, str]  # shape, concurrency, k, category ("" for random prompts)


def fingerprint_differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Dotted keys whose values differ, hardware, driver and date left out."""
    fa, fb = flatten(matched_part(a)), flatten(matched_part(b))
    return [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def where_differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """The hardware and driver keys that differ (expected between machines; reported, never flagged)."""
    fa = flatten({k: a.get(k) for k in WHERE_AND_WHEN if k != "date"})
    fb = flatten({k: b.get(k) for k in WHERE_AND_WHEN if k != "date"})
    return [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def latest_by_cell(rows: Sequence[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    found: dict[Key, dict[str, Any]] = {}
    for row in rows:
        found[(row["shape"], row["concurrency"], row["k"], row["category"] or "")] = row
    return found


def _side(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    m = row["metrics"] if row["status"] == "ok" and row["metrics"] else {}
    error = row["error"] or {}
    return {"status": row["status"], "run_id": row["run_id"], "date": row["fingerprint"].get("date"),
            "output_throughput": m.get("output_throughput"), "mean_tpot_ms": m.get("mean_tpot_ms"),
            "acceptance_rate": m.get("acceptance_rate"), "known_failure": error.get("known_failure")}


def _order(keys: set[Key], rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]]) -> list[Key]:
    shapes = list(dict.fromkeys(r["shape"] for r in [*rows_a, *rows_b]))
    return sorted(keys, key=lambda key: (shapes.index(key[0]), key[1], key[3], key[2]))


def prompts_of(row: dict[str, Any]) -> tuple[str, str | None]:
    workload = row["fingerprint"]["workload"]
    return workload["dataset"], workload["dataset_sha256"]


def _prompt_name(prompts: tuple[str, str | None]) -> str:
    return prompts[0] + (f" (sha256 {prompts[1][:12]})" if prompts[1] else "")


def _check_same_prompts(cells_a: dict[Key, dict[str, Any]], cells_b: dict[Key, dict[str, Any]], file_a: Path,
                        file_b: Path) -> None:
    """Refuse cells measured on different prompts: their acceptance and speed answer different questions."""
    for key in sorted(set(cells_a) & set(cells_b)):
        a, b = prompts_of(cells_a[key]), prompts_of(cells_b[key])
        if a != b:
            raise UsageError(f"{file_a} and {file_b} measured shape {key[0]} c={key[1]} k={key[2]} on different "
                             f"prompts: A {_prompt_name(a)}, B {_prompt_name(b)}",
                             fix="bench both machines with the same --dataset, or pass --allow-different-prompts "
                                 "to line them up anyway (flagged as differing)")


def compare(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], file_a: Path,
            file_b: Path, *, allow_different_prompts: bool = False) -> dict[str, Any]:
    """The `dsv4setup.bench-compare/2` document; UsageError for different prompts unless allowed."""
    cells_a, cells_b = latest_by_cell(rows_a), latest_by_cell(rows_b)
    if not allow_different_prompts:
        _check_same_prompts(cells_a, cells_b, file_a, file_b)
    entries: list[dict[str, Any]] = []
    for key in _order(set(cells_a) | set(cells_b), rows_a, rows_b):
        a, b = cells_a.get(key), cells_b.get(key)
        diffs = fingerprint_differences(a["fingerprint"], b["fingerprint"]) if a and b else []
        where = where_differences(a["fingerprint"], b["fingerprint"]) if a and b else []
        sa, sb = _side(a), _side(b)
        ta = sa["output_throughput"] if sa else None
        tb = sb["output_throughput"] if sb else None
        entries.append({"shape": key[0], "concurrency": key[1], "k": key[2], "category": key[3] or None,
                        "a": sa, "b": sb,
                        "ratio": round(tb / ta, 3) if ta and tb else None,
                        "matched": bool(a and b) and not diffs, "differences": diffs,
                        "hardware_differences": where})
    return {"schema": COMPARE_SCHEMA, "ok": True, "a": str(file_a), "b": str(file_b),
            "counts": {"cells": len(entries), "matched": sum(e["matched"] for e in entries),
                       "mismatched": sum(bool(e["a"] and e["b"] and e["differences"]) for e in entries),
                       "only_a": sum(e["b"] is None for e in entries), "only_b": sum(e["a"] is None for e in entries)},
            "differing_keys": sorted({d["key"] for e in entries for d in e["differences"]}),
            "cells": entries}
