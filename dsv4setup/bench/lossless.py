"""Lossless: at temperature 0 the text generated with k>0 must equal the text generated at k=0.

Speculative decoding only proposes tokens; the target model verifies them, so greedy output is the
same with and without MTP, up to numerics (the verification runs k+1 tokens per step, other kernel
shapes, and a near-tie can flip). Each `vllm bench serve` of a run saves every request's generated
text (`--save-detailed`), in the order of its prompts: the same prompts, seed and order for every k.
Here each k>0 cell is compared with the k=0 cell of the same shape, concurrency and category: how
many prompts gave identical text, and for each that did not, where the texts part and a short
excerpt of both. Pure functions over the texts; the caller reads vLLM's saved results.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BEFORE = 12  # characters of context before the first difference in an excerpt
AFTER = 36
PROMPT_CHARS = 60

Key = tuple[str, int, str | None]  # shape, concurrency, category


def first_difference(a: str, b: str) -> int | None:
    """The first character position where a and b differ (the shorter one's end if one is a prefix); None: equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def excerpt(text: str, at: int) -> str:
    """The text around position `at`, marked where it was cut."""
    start, end = max(0, at - BEFORE), at + AFTER
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def compare_texts(reference: Sequence[str | None], candidate: Sequence[str | None],
                  prompts: Sequence[str] | None = None) -> dict[str, Any]:
    """Prompt by prompt: identical, or the first differing character and an excerpt of both texts there.

    A request that failed (no text) on either side counts as differing, at position 0.
    """
    differing = []
    total = max(len(reference), len(candidate))
    for index in range(total):
        ref = reference[index] if index < len(reference) else None
        got = candidate[index] if index < len(candidate) else None
        if ref is not None and got is not None and ref == got:
            continue
        at = first_difference(ref, got) if ref is not None and got is not None else 0
        differing.append({"index": index,
                          "prompt": (prompts[index][:PROMPT_CHARS] if prompts and index < len(prompts) else None),
                          "position": at, "reference": excerpt(ref, at or 0) if ref is not None else None,
                          "candidate": excerpt(got, at or 0) if got is not None else None})
    return {"identical": total - len(differing), "total": total, "differing": differing}


def generated_texts(raw_file: Path) -> list[str | None] | None:
    """The generated texts vLLM saved in a result file (`--save-detailed`); None when it saved none."""
    try:
        texts = json.loads(raw_file.read_text(encoding="utf-8")).get("generated_texts")
    except (OSError, ValueError, AttributeError):
        return None
    return [t if isinstance(t, str) else None for t in texts] if isinstance(texts, list) else None


def lossless(rows: Sequence[dict[str, Any]], texts_of: Callable[[dict[str, Any]], list[str | None] | None],
             prompts_of: Callable[[str | None], list[str] | None]) -> list[dict[str, Any]]:
    """One entry per k>0 cell that has a k=0 cell to compare with, both measured with their texts saved."""
    reference: dict[Key, list[str | None]] = {}
    for row in rows:
        texts = texts_of(row) if row["k"] == 0 and row["status"] == "ok" else None
        if texts is not None:
            reference[(row["shape"], row["concurrency"], row["category"])] = texts
    entries = []
    for row in rows:
        key = (row["shape"], row["concurrency"], row["category"])
        if row["k"] == 0 or row["status"] != "ok" or key not in reference:
            continue
        texts = texts_of(row)
        if texts is None:
            continue
        result = compare_texts(reference[key], texts, prompts_of(row["category"]))
        entries.append({"k": row["k"], "shape": key[0], "concurrency": key[1], "category": key[2], **result})
    return entries


def beyond_tolerance(by_k: dict[str, dict[str, int]], tolerance: float | None) -> list[int]:
    """The k values whose share of differing prompts exceeds the profile's tolerance (none when unmeasured)."""
    if tolerance is None:
        return []
    return [int(k) for k, t in by_k.items() if t["total"] and (t["total"] - t["identical"]) / t["total"] > tolerance]


def totals(entries: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per k: identical prompts out of all compared (`lossless: N/M`)."""
    out: dict[str, dict[str, int]] = {}
    for entry in entries:
        total = out.setdefault(str(entry["k"]), {"identical": 0, "total": 0})
        total["identical"] += entry["identical"]
        total["total"] += entry["total"]
    return out
