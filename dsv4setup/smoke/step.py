"""smoke: a deterministic chat completion through the official openai client, and the MTP proof.

The report of the last run (pass or fail) is kept in `<workdir>/run/smoke.json`. The
postcondition needs a passed report for the server instance running now (pid and start time),
that server healthy, and its spec-decode counters still on /metrics, not gone back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsv4setup.cluster.nodes import on_worker
from dsv4setup.core.engine import Postcondition, RunContext, Step
from dsv4setup.core.errors import StepError
from dsv4setup.core.fsutil import atomic_write_json
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.apikey import client_api_key
from dsv4setup.serve.manager import server_state
from dsv4setup.serve.metrics import fetch_metrics, parse_spec_decode
from dsv4setup.serve.readiness import base_url
from dsv4setup.smoke.probe import SmokeRequest, run_smoke


def report_file(workdir: Workdir) -> Path:
    return workdir.run_dir / "smoke.json"


def _read_report(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


class SmokeStep(Step):
    name = "smoke"
    description = "chat completion via the openai client; prove MTP drafts are made and accepted"
    needs = ("serve",)

    def not_applicable(self, ctx: RunContext) -> str | None:
        return on_worker(ctx)

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        spec = ctx.profile.spec.num_speculative_tokens
        return {"smoke": ctx.profile.smoke.model_dump(), "num_speculative_tokens": spec}

    def is_done(self, ctx: RunContext) -> Postcondition:
        state = server_state(ctx.workdir)
        if not state.healthy or state.record is None:
            return Postcondition(False, f"server: {state.detail}")
        record, smoked = state.record, _read_report(report_file(ctx.workdir))
        if not smoked.get("ok") or (smoked.get("server_pid"), smoked.get("server_started_at")) != (
                record.pid, record.started_at):
            return Postcondition(False, f"the running server (pid {record.pid}) has not passed a smoke test")
        if ctx.profile.spec.num_speculative_tokens == 0:
            return Postcondition(True, f"server pid {record.pid} healthy (speculative decoding off)")
        try:
            counters = parse_spec_decode(fetch_metrics(base_url(record.host, record.port), client_api_key(ctx.workdir)))
        except OSError as exc:
            return Postcondition(False, f"/metrics does not answer: {exc}")
        if counters is None:
            return Postcondition(False, "the spec-decode counters are gone from /metrics")
        if counters.drafts < smoked.get("mtp", {}).get("drafts_total", 0):
            return Postcondition(False, "the spec-decode counters went back: not the smoke-tested server")
        return Postcondition(True, f"server pid {record.pid} healthy, spec-decode counters present "
                                   f"({counters.drafts:.0f} drafts, {counters.accepted:.0f} accepted so far)")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        path = report_file(ctx.workdir)
        path.unlink(missing_ok=True)
        state = server_state(ctx.workdir)
        if not state.healthy or state.record is None:
            raise StepError(f"no healthy server to smoke-test: {state.detail}",
                            hint="start it: `dsv4setup up --redo serve` (or `dsv4setup serve`)")
        record, profile = state.record, ctx.profile
        req = SmokeRequest(base_url=base_url(record.host, record.port), api_key=client_api_key(ctx.workdir),
                           model=profile.serve.served_model_name, prompt=profile.smoke.prompt,
                           expect=profile.smoke.expect, max_tokens=profile.smoke.max_tokens,
                           num_speculative_tokens=profile.spec.num_speculative_tokens,
                           min_acceptance=profile.smoke.min_acceptance)
        ctx.progress(f"chat completion against {req.base_url} ({req.max_tokens} tokens max)")
        report = run_smoke(req)
        doc = {**report.to_doc(), "server_pid": record.pid, "server_started_at": record.started_at}
        atomic_write_json(path, doc)
        log = ctx.require_log()
        for check in report.checks:
            log.line(f"{'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")
        log.line(f"content: {(report.content or '')[:500]!r}")
        failure = report.first_failure()
        if failure is not None:
            raise StepError(f"smoke check {failure['name']} failed: {failure['detail']} (report: {path})",
                            hint=failure["hint"])
        mtp = report.mtp
        return {"ok": True, "report": str(path), "server_pid": record.pid, "server_started_at": record.started_at,
                "tokens_per_s": doc["tokens_per_s"], "mtp_checked": mtp.get("checked", False),
                "acceptance_rate": mtp.get("acceptance_rate"),
                "mean_acceptance_length": mtp.get("mean_acceptance_length"),
                "per_position_rates": mtp.get("per_position_rates"), "drafts": mtp.get("drafts"),
                "drafts_total": mtp.get("drafts_total", 0)}


STEP = SmokeStep
