"""The smoke test of a running server and its report (`<workdir>/run/smoke.json`): what the smoke
step runs, and what the bench runs against the server it restores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsv4setup.core.errors import StepError
from dsv4setup.core.fsutil import atomic_write_json
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import RunContext
from dsv4setup.serve.apikey import client_api_key
from dsv4setup.serve.manager import server_state
from dsv4setup.serve.readiness import base_url
from dsv4setup.smoke.probe import Compare, SmokeRequest, run_smoke


def report_file(workdir: Workdir) -> Path:
    return workdir.run_dir / "smoke.json"


def read_report(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _lossless(ctx: RunContext) -> Compare:
    """The comparison with the k=0 reference, checked (present, not stale) before the smoke test sends anything."""
    from dsv4setup.bench.reference import reference_file
    from dsv4setup.smoke.lossless import checked_reference, compare_with_reference

    ctx.progress("checking the lossless reference against the setup of now")
    reference = checked_reference(ctx)
    k, tolerance = ctx.profile.spec.num_speculative_tokens, ctx.profile.bench.lossless_tolerance

    def compare(client: Any, model: str | None) -> dict[str, Any]:
        ctx.progress(f"lossless: {len(reference.prompts)} reference prompts, one at a time, at k={k}")
        return compare_with_reference(client, model, reference, k, str(reference_file(ctx.workdir)), tolerance)

    return compare


def smoke_test(ctx: RunContext) -> dict[str, Any]:
    """Smoke-test the running server; write the report (pass or fail); raise StepError on a failed check.

    With the option `smoke_lossless` (`smoke --lossless`) the server's greedy texts are also compared with the
    k=0 reference of the last bench (smoke/lossless.py); a missing or stale reference is refused before anything
    is sent (StepError with the bench command that writes a fresh one).
    """
    path = report_file(ctx.workdir)
    path.unlink(missing_ok=True)
    state = server_state(ctx.workdir)
    if not state.healthy or state.record is None:
        raise StepError(f"no healthy server to smoke-test: {state.detail}",
                        fix="start it: `dsv4setup up --redo serve` (or `dsv4setup serve`)")
    record, profile = state.record, ctx.profile
    compare = _lossless(ctx) if ctx.options.get("smoke_lossless") else None
    req = SmokeRequest(base_url=base_url(record.host, record.port), api_key=client_api_key(ctx.workdir),
                       model=profile.serve.served_model_name, prompt=profile.smoke.prompt,
                       expect=profile.smoke.expect, max_tokens=profile.smoke.max_tokens,
                       num_speculative_tokens=profile.spec.num_speculative_tokens,
                       min_acceptance=profile.smoke.min_acceptance)
    ctx.progress(f"chat completion against {req.base_url} ({req.max_tokens} tokens max)")
    report = run_smoke(req, compare)
    doc = {**report.to_doc(), "server_pid": record.pid, "server_started_at": record.started_at}
    atomic_write_json(path, doc)
    log = ctx.require_log()
    for check in report.checks:
        log.line(f"{'ok  ' if check.ok else 'FAIL'} {check.id}: {check.summary}")
    log.line(f"content: {(report.content or '')[:500]!r}")
    for differing in (report.lossless or {}).get("differing", []):
        log.line(f"lossless: prompt #{differing['index']} ({differing['prompt']!r}) differs at character "
                 f"{differing['position']}: reference {differing['reference']!r}, now {differing['candidate']!r}")
    failure = report.first_failure()
    if failure is not None:
        raise StepError(f"smoke check {failure.id} failed: {failure.summary} (report: {path})", fix=failure.fix)
    mtp = report.mtp
    return {"ok": True, "report": str(path), "server_pid": record.pid, "server_started_at": record.started_at,
            "tokens_per_s": doc["tokens_per_s"], "mtp_checked": mtp.get("checked", False),
            "acceptance_rate": mtp.get("acceptance_rate"),
            "mean_acceptance_length": mtp.get("mean_acceptance_length"),
            "per_position_rates": mtp.get("per_position_rates"), "drafts": mtp.get("drafts"),
            "drafts_total": mtp.get("drafts_total", 0)}
