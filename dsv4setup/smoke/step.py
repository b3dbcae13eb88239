"""smoke: a deterministic chat completion through the official openai client, and the MTP proof.

The report of the last run (pass or fail) is kept in `<workdir>/run/smoke.json`. The
postcondition needs a passed report for the server instance running now (pid and start time),
that server healthy, and its spec-decode counters still on /metrics, not gone back.
"""

from __future__ import annotations

from typing import Any

from dsv4setup.cluster.nodes import on_worker
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.engine import RunContext, Step
from dsv4setup.serve.apikey import client_api_key
from dsv4setup.serve.manager import server_state
from dsv4setup.serve.metrics import fetch_metrics, parse_spec_decode
from dsv4setup.serve.readiness import base_url
from dsv4setup.smoke.outputs import SmokeOutputs
from dsv4setup.smoke.report import read_report, report_file, smoke_test


class SmokeStep(Step):
    name = "smoke"
    description = "chat completion via the openai client; prove MTP drafts are made and accepted"
    needs = ("serve",)
    proves = ("serve",)  # a passed smoke test of the server running now: a restarted server needs its own
    Outputs = SmokeOutputs

    def not_applicable(self, ctx: RunContext) -> str | None:
        return on_worker(ctx)

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        spec = ctx.profile.spec.num_speculative_tokens
        return {"smoke": ctx.profile.smoke.model_dump(), "num_speculative_tokens": spec}

    def is_done(self, ctx: RunContext) -> Finding:
        state = server_state(ctx.workdir)
        if not state.healthy or state.record is None:
            return postcondition(False, f"server: {state.detail}")
        record, smoked = state.record, read_report(report_file(ctx.workdir))
        if not smoked.get("ok") or (smoked.get("server_pid"), smoked.get("server_started_at")) != (
                record.pid, record.started_at):
            return postcondition(False, f"the running server (pid {record.pid}) has not passed a smoke test")
        if ctx.profile.spec.num_speculative_tokens == 0:
            return postcondition(True, f"server pid {record.pid} healthy (speculative decoding off)")
        try:
            counters = parse_spec_decode(fetch_metrics(base_url(record.host, record.port), client_api_key(ctx.workdir)))
        except OSError as exc:
            return postcondition(False, f"/metrics does not answer: {exc}")
        if counters is None:
            return postcondition(False, "the spec-decode counters are gone from /metrics")
        if counters.drafts < smoked.get("mtp", {}).get("drafts_total", 0):
            return postcondition(False, "the spec-decode counters went back: not the smoke-tested server")
        return postcondition(True, f"server pid {record.pid} healthy, spec-decode counters present "
                                   f"({counters.drafts:.0f} drafts, {counters.accepted:.0f} accepted so far)")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return smoke_test(ctx)


STEP = SmokeStep
