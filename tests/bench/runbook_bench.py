"""A runbook of serve, smoke and bench only (DSV4SETUP_RUNBOOK=tests.bench.runbook_bench:steps).

The bench tests prepare the serving venv and the checkpoint themselves (as the serve tests do);
the full runbook is the lead's e2e test.
"""

from __future__ import annotations

from dsv4setup.bench.step import BenchStep
from dsv4setup.engine import Step
from dsv4setup.serve.step import ServeStep
from dsv4setup.smoke.step import SmokeStep


def steps() -> list[Step]:
    return [ServeStep(), SmokeStep(), BenchStep()]


def bench_only() -> list[Step]:
    """The bench step alone: its `needs` are not in this runbook, so it runs without serve and smoke records."""
    return [BenchStep()]
