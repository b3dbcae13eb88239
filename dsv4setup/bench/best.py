"""The winning k per shape, and writing it into the workdir overrides with the evidence.

A k wins a shape by output throughput (tokens/s). With several concurrency levels, or a prompt
set's categories (each measured on its own), its score is the geometric mean over them, and
only a k that succeeded at every level and category may win (a k that crashes under load is
no choice). Equal scores (to 0.01 tok/s) go to the lower k: fewer speculative tokens cost
less when the workload shifts.

`--weights code=3,chat=1` weighs the categories of a prompt set in that mean (a category not
named weighs 1), for a workload that is mostly code. Each category's own best k is kept beside
the choice, so the categories that would have picked another k can be named.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv4setup.core.errors import UsageError
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
    by_category: dict[str, int] = field(default_factory=dict)  # each category's own best k
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def other_k(self) -> dict[str, int]:
        """The categories whose own best k is another one than the choice."""
        return {c: k for c, k in self.by_category.items() if k != self.k}

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "k": self.k, "output_throughput": round(self.score, 2),
                "concurrency": self.concurrency, "weights": self.weights, "by_category": self.by_category,
                "other_k": self.other_k,
                "scores": {str(k): (round(v, 2) if v is not None else None) for k, v in sorted(self.scores.items())},
                "acceptance_rate": {str(k): v for k, v in sorted(self.acceptance.items())}}


def _geomean(values: list[float], weights: list[float] | None = None) -> float:
    weights = weights or [1.0] * len(values)
    if not all(v > 0 for v in values) or not sum(weights):
        return 0.0
    product: float = math.prod(v ** w for v, w in zip(values, weights, strict=True))
    return float(product ** (1 / sum(weights)))


def parse_weights(text: str | None, categories: Sequence[str | None]) -> dict[str, float]:
    """'code=3,chat=1' -> {"code": 3.0, "chat": 1.0}; each name must be a category of the prompt set measured."""
    if not text:
        return {}
    known = [c for c in categories if c]
    if not known:
        raise UsageError("--weights needs a prompt set with categories (--dataset mix or FILE)",
                         fix="drop --weights, or bench with --dataset mix")
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        try:
            weight = float(value) if sep else -1.0
        except ValueError:
            weight = -1.0
        if weight < 0 or not math.isfinite(weight):
            raise UsageError(f"--weights {text!r}: {part!r} is not CATEGORY=WEIGHT with a weight >= 0",
                             fix="e.g. --weights coding=3,qa=1")
        if name.strip() not in known:
            raise UsageError(f"--weights {text!r}: the prompt set has no category {name.strip()!r} "
                             f"(it has: {', '.join(known)})")
        weights[name.strip()] = weight
    if not any(weights.get(c, 1.0) for c in known):
        raise UsageError(f"--weights {text!r}: every category weighs 0")
    return weights


def _own_best(rows: list[dict[str, Any]], category: str) -> int | None:
    """The k with the best output throughput on one category alone (geometric mean over concurrency)."""
    mine = [r for r in rows if r["category"] == category]
    levels = {r["concurrency"] for r in mine}
    scores = []
    for k in sorted({r["k"] for r in mine}):
        ok = {r["concurrency"]: r["metrics"]["output_throughput"] for r in mine if r["k"] == k and r["status"] == "ok"}
        if set(ok) == levels:
            scores.append((round(_geomean(list(ok.values())), 2), -k))
    return -max(scores)[1] if scores else None


def choose_best(rows: Iterable[dict[str, Any]], weights: dict[str, float] | None = None) -> dict[str, Choice]:
    """Per shape, the k with the best output throughput among successful rows (ties -> lower k)."""
    weights = weights or {}
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
            scores[k] = _geomean([ok[c]["metrics"]["output_throughput"] for c in levels],
                                 [weights.get(cat or "", 1.0) for _, cat in levels])
            rates = [ok[c]["metrics"].get("acceptance_rate") for c in levels]
            acceptance[k] = round(sum(rates) / len(rates), 4) if all(r is not None for r in rates) else None
        eligible = [(round(v, 2), -k) for k, v in scores.items() if v is not None]
        if not eligible:
            continue
        _, neg_k = max(eligible)
        best_k = -neg_k
        concurrency = sorted({c for c, _ in levels})
        own = {cat: _own_best(shape_rows, cat) for cat in dict.fromkeys(cat for _, cat in levels) if cat}
        choices[shape] = Choice(shape, best_k, scores[best_k] or 0.0, concurrency, scores, acceptance,
                                {c: k for c, k in own.items() if k is not None}, weights)
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
