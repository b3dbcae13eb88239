"""What the smoke step records (validated by the engine before saving)."""

from __future__ import annotations

from dsv4setup.core.outputs import StepOutputs


class SmokeOutputs(StepOutputs):
    step = "smoke"

    ok: bool
    report: str
    server_pid: int
    server_started_at: str
    tokens_per_s: float | None
    mtp_checked: bool
    acceptance_rate: float | None
    mean_acceptance_length: float | None
    per_position_rates: list[float] | None
    drafts: float | None
    drafts_total: float
