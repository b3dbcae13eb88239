"""bench (optional, `up --bench`): the matched MTP matrix with vLLM's own `vllm bench serve`.

For each k the server is restarted with that num_speculative_tokens, measured per shape and
concurrency, and finally put back at the configured k and smoke-tested again (see
dsv4setup/bench/runner.py), so serve and smoke stay verified. Results go to
`<workdir>/bench/` (results.jsonl, report.md, chart.png, last-run.json).

Postcondition: results.jsonl holds a row for every cell of the matrix, measured with the
setup this workdir has now (same fingerprint but the date): upgrading vLLM, changing a
patch, the checkpoint revision or an override makes the bench due again.

Options (from `dsv4setup bench`): bench_k, bench_shape, bench_concurrency (comma lists), bench_dataset, bench_weights,
apply_best, bench_run_id, bench_display (a progress display), bench_source_file.
"""

from __future__ import annotations

import json
from typing import Any

from dsv4setup.bench.outputs import BenchOutputs
from dsv4setup.cluster.nodes import on_worker
from dsv4setup.core.errors import DsvError, StepError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.engine import RunContext, Step


def _plan(ctx: RunContext) -> Any:
    from dsv4setup.bench.matrix import plan_matrix

    opts = ctx.options
    return plan_matrix(ctx.profile, opts.get("bench_k"), opts.get("bench_shape"), opts.get("bench_concurrency"),
                       opts.get("bench_dataset"))


def _base(ctx: RunContext) -> Any:
    from dsv4setup.bench.fingerprint import base_profile

    return base_profile(ctx.profile, ctx.options.get("bench_source_file"), ctx.workdir)


class BenchStep(Step):
    name = "bench"
    description = "measure tok/s and MTP acceptance per k with vllm bench serve; report and chart"
    needs = ("smoke",)
    Outputs = BenchOutputs

    def not_applicable(self, ctx: RunContext) -> str | None:
        return on_worker(ctx)

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        from dsv4setup.bench.fingerprint import serve_args
        from dsv4setup.serve.launch import effective_profile, render_command

        argv, env = render_command(ctx, effective_profile(ctx))  # k and the address do not make a new bench due
        return {"matrix": _plan(ctx).to_dict(), "serve_args": serve_args(argv), "env": env}

    def is_done(self, ctx: RunContext) -> Finding:
        from dsv4setup.bench.client import probe_vllm
        from dsv4setup.bench.fingerprint import probe_hardware, workload_part
        from dsv4setup.bench.rows import read_rows
        from dsv4setup.bench.runner import setup_fingerprint
        from dsv4setup.serve.launch import effective_profile, render_command

        results = ctx.workdir.bench_dir / "results.jsonl"
        try:
            plan = _plan(ctx)
            rows = read_rows(results) if results.exists() else []
        except DsvError as exc:
            return postcondition(False, exc.message)
        argv, env = render_command(ctx, effective_profile(ctx))
        base = setup_fingerprint(ctx.profile, ctx.state, _base(ctx), argv, env,
                                 probe_vllm(ctx.workdir.venv_python), probe_hardware())
        expected = {s.name: json.loads(json.dumps({**base, "workload": workload_part(s, plan.seed, plan.prompts)}))
                    for s in plan.shapes}
        measured = {(r["k"], r["shape"], r["concurrency"], r["category"]) for r in rows
                    if {k: v for k, v in r["fingerprint"].items() if k != "date"} == expected.get(r["shape"])}
        cells = [c for k in plan.ks for c in plan.cells(k)]
        missing = [c.label for c in cells if c.key not in measured]
        if missing:
            return postcondition(False, f"not measured with this setup yet: {', '.join(missing[:6])}"
                                        + (f" and {len(missing) - 6} more" if len(missing) > 6 else ""))
        return postcondition(True, f"all {plan.size} cells measured with this setup ({results})")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from dsv4setup.bench.best import parse_weights
        from dsv4setup.bench.execute import execute
        from dsv4setup.bench.runner import BenchSession, NoProgress, new_run_id

        plan = _plan(ctx)
        weights = parse_weights(ctx.options.get("bench_weights"), plan.categories)
        session = BenchSession(workdir=ctx.workdir, profile=ctx.profile, state=ctx.state, log=ctx.require_log(),
                               plan=plan, base_profile=_base(ctx), host=ctx.options.get("host"),
                               say=ctx.progress, display=ctx.options.get("bench_display") or NoProgress(),
                               run_id=ctx.options.get("bench_run_id") or new_run_id())
        doc = execute(session, apply=bool(ctx.options.get("apply_best")), weights=weights)
        if not doc["ok"]:
            fix = doc["restore"].get("fix") or f"see {doc['files']['markdown']} and `dsv4setup logs bench`"
            raise StepError("bench: " + "; ".join(doc["problems"]), fix=fix)
        return {"run_id": doc["run_id"], "results": doc["files"]["results"], "report": doc["files"]["markdown"],
                "chart": doc["files"]["chart"], "document": doc["files"]["document"], "counts": doc["counts"],
                "best": {shape: best["k"] for shape, best in doc["best"].items()},
                "applied_k": doc["applied"]["k"] if doc["applied"] else None, "server": doc["restore"]["server"]}


STEP = BenchStep
