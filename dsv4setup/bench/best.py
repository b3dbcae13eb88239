"""The winning k per shape, and writing it into the workdir overrides with the evidence.

A k wins a shape by output throughput (tokens/s). With several concurrency levels, or a prompt
set's categories (each measured on its own), its score is the geometric mean over them, and
only a k that succeeded at every level and category may win (a k that crashes under load is
no choice). Equal scores (to 0.01 tok/s) go to the lower k:
fewer speculative tokens cost less when the workload shifts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv4setup.core.workdir import Workdir

OVERRIDE_KEY = "spec.num_speculative_tokens"


@dataclass(frozen=True)
class Choice:
    shape: str
    k: int
    score: float  # output tokens/s (geometric mean over the concurrency levels)
    concurrency: list[int]
    scores: dict[int, float | None] = field(default_factory=dict)  # None: the k failed somewhere
    acceptance: dict[int, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "k": self.k, "output_throughput": round(self.score, 2),
                "concurrency": self.concurrency,
                "scores": {str(k): (round(v, 2) if v is not None else None) for k, v in sorted(self.scores.items())},
                "acceptance_rate": {str(k): v for k, v in sorted(self.acceptance.items())}}


def _geomean(values: list[float]) -> float:
    return math.prod(values) ** (1 / len(values)) if all(v > 0 for v in values) else 0.0


def choose_best(rows: Iterable[dict[str, Any]]) -> dict[str, Choice]:
    """Per shape, the k with the best output throughput among successful rows (ties -> lower k)."""
    by_shape: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_shape.setdefault(row["shape"], []).append(row)
    choices: dict[str, Choice] = {}
    for shape, shape_rows in by_shape.items():
        levels = list(dict.fromkeys((r["concurrency"], r["category"]) for r in shape_rows))
        scores: dict[int, float | None] = {}
        acceptance: dict[int, float | None] = {}
        for k in sorted({r["k"] for r in shape_rows}):
            ok = {(r["concurrency"], r["category"]): r for r in shape_rows if r["k"] == k and r["status"] == "ok"}
            if set(ok) != set(levels):
                scores[k] = None
                continue
            scores[k] = _geomean([ok[c]["metrics"]["output_throughput"] for c in levels])
            rates = [ok[c]["metrics"].get("acceptance_rate") for c in levels]
            acceptance[k] = round(sum(rates) / len(rates), 4) if all(r is not None for r in rates) else None
        eligible = [(round(v, 2), -k) for k, v in scores.items() if v is not None]
        if not eligible:
            continue
        _, neg_k = max(eligible)
        best_k = -neg_k
        concurrency = sorted({c for c, _ in levels})
        choices[shape] = Choice(shape, best_k, scores[best_k] or 0.0, concurrency, scores, acceptance)
    return choices


def pick_for_profile(choices: dict[str, Choice], default_shape: str, shapes_in_order: list[str]) -> Choice | None:
    """The one choice to serve: the profile's default shape if it was measured, else the first shape measured."""
    if default_shape in choices:
        return choices[default_shape]
    return next((choices[s] for s in shapes_in_order if s in choices), None)


def apply_best(workdir: Workdir, choice: Choice, evidence: dict[str, Any]) -> Path:
    """Write the winning k into <workdir>/dsv4setup.yaml, with the evidence beside it."""
    from dsv4setup.profiles.overrides import write_override

    return write_override(workdir, OVERRIDE_KEY, choice.k, evidence={**choice.to_dict(), **evidence})
