"""What the bench step records (validated by the engine before saving)."""

from __future__ import annotations

from dsv4setup.core.outputs import StepOutputs


class BenchOutputs(StepOutputs):
    step = "bench"

    run_id: str
    results: str
    report: str
    chart: str | None
    document: str
    counts: dict[str, int]
    best: dict[str, int]
    applied_k: int | None
    server: str
