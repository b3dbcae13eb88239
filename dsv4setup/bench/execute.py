"""One bench run from start to report: matrix, best k (and --apply-best), server restored, files written.

The bench step calls this; so does `dsv4setup bench` (through the engine, as the bench step).
"""

from __future__ import annotations

from typing import Any

from dsv4setup.bench import BENCH_SCHEMA
from dsv4setup.bench.best import Choice, apply_best, choose_best, pick_for_profile
from dsv4setup.bench.fingerprint import now_utc
from dsv4setup.bench.lossless import beyond_tolerance, generated_texts, lossless, totals
from dsv4setup.bench.reference import CONCURRENCY, build_reference, setup_fingerprint, write_reference
from dsv4setup.bench.report import (
    CHART_NAME,
    DOCUMENT_NAME,
    MARKDOWN_NAME,
    summary,
    write_chart,
    write_document,
    write_markdown,
)
from dsv4setup.bench.runner import BenchSession, MatrixRun, render_for, restore, run_matrix, with_k
from dsv4setup.profiles.model import Profile


def _apply(session: BenchSession, run: MatrixRun, choices: dict[str, Choice]) -> tuple[dict[str, Any] | None, str]:
    """Write the winner into the overrides; (what was applied, or None, and why not)."""
    profile = session.profile
    choice = pick_for_profile(choices, profile.bench.default_shape, [s.name for s in session.plan.shapes])
    if choice is None:
        return None, "no k succeeded for any shape: nothing to apply"
    first = next(r for r in run.rows if r["status"] == "ok")
    fp = first["fingerprint"]
    evidence = {"by": "dsv4setup bench --apply-best", "run_id": run.run_id,
                "results": str(session.results_file), "previous": profile.spec.num_speculative_tokens,
                "vllm": f"{fp['vllm']['package']} {fp['vllm']['version']}",
                "hardware": ", ".join(g["name"] for g in fp["hardware"]["gpus"]) or
                fp["hardware"]["host"].get("cpu_model") or fp["hardware"]["host"].get("arch")}
    file = apply_best(session.workdir, choice, evidence)
    session.log.line(f"--apply-best: spec.num_speculative_tokens = {choice.k} written to {file}")
    return {"k": choice.k, "shape": choice.shape, "previous_k": profile.spec.num_speculative_tokens,
            "file": str(file)}, ""


def lossless_part(session: BenchSession, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Greedy output of each k>0 cell against k=0's (see lossless.py), from the texts vLLM saved."""
    bench_dir, prompts = session.workdir.bench_dir, session.plan.prompts

    def texts_of(row: dict[str, Any]) -> list[str | None] | None:
        return generated_texts(bench_dir / row["raw_result"]) if row["raw_result"] else None

    def prompts_of(category: str | None) -> list[str] | None:
        return [p.text for p in prompts.only(category).prompts] if prompts and category else None

    entries = lossless(rows, texts_of, prompts_of)
    by_k, tolerance = totals(entries), session.profile.bench.lossless_tolerance
    return {"by_k": by_k, "tolerance": tolerance, "beyond": beyond_tolerance(by_k, tolerance), "cells": entries}


def store_reference(session: BenchSession, run: MatrixRun) -> str | None:
    """Keep the k=0 texts of this run on a prompt set as the lossless reference of `smoke --lossless`
    (bench/reference.py); the file written, or None (and why, in the log) when this run cannot make one."""
    plan = session.plan
    if plan.prompts is None or plan.dataset_source is None or 0 not in plan.ks:
        return None
    names = [s.name for s in plan.shapes]
    shape = plan.shapes[names.index(session.profile.bench.default_shape)] \
        if session.profile.bench.default_shape in names else plan.shapes[0]
    texts: dict[str, list[str | None]] = {}
    for row in run.rows:
        if (row["k"], row["shape"], row["concurrency"], row["status"]) == (0, shape.name, CONCURRENCY, "ok") \
                and row["raw_result"]:
            saved = generated_texts(session.workdir.bench_dir / row["raw_result"])
            if saved is not None and len(saved) == plan.prompts.categories().get(row["category"]):
                texts[row["category"]] = saved
    missing = [c for c in plan.prompts.categories() if c not in texts]
    if missing:
        session.log.line(f"no new lossless reference: k=0 at concurrency {CONCURRENCY} on shape {shape.name} has no "
                         f"complete texts for {', '.join(missing)}")
        return None
    argv, env = render_for(session, with_k(session.profile, 0))
    setup = setup_fingerprint(session.profile, session.state, session.workdir, run.vllm, argv, env)
    doc = build_reference(run_id=run.run_id, setup=setup, prompts=plan.prompts, dataset_source=plan.dataset_source,
                          shape=shape, seed=plan.seed, fit_output_len=max(s.output_len for s in plan.shapes),
                          texts=texts)
    path = write_reference(session.workdir, doc)
    session.log.line(f"lossless reference: {len(doc['prompts'])} k=0 texts written to {path}")
    return str(path)


def execute(session: BenchSession, apply: bool = False, weights: dict[str, float] | None = None) -> dict[str, Any]:
    """Run the matrix and everything after it; returns the `dsv4setup.bench/3` document (also written to disk)."""
    run = run_matrix(session)
    choices = choose_best(run.rows, weights)
    applied, not_applied = (None, "")
    target: Profile = session.profile
    if apply:
        applied, not_applied = _apply(session, run, choices)
        if applied:
            target = with_k(session.profile, applied["k"])
    restored = restore(session, target, run.was_running)
    bench_dir = session.workdir.bench_dir
    same_text = lossless_part(session, run.rows)
    reference = store_reference(session, run)
    ok = sum(r["status"] == "ok" for r in run.rows)
    counts = {"ok": ok, "failed": len(run.rows) - ok}
    problems = [p for p in (
        "no cell of the matrix succeeded" if not counts["ok"] else "",
        not_applied if apply else "",
        *(f"k={k} changed the greedy output of {t['total'] - t['identical']} of {t['total']} prompts, beyond the "
          f"profile's lossless tolerance ({same_text['tolerance']:.0%}): the report's Lossless section names them"
          for k, t in same_text["by_k"].items() if int(k) in same_text["beyond"]),
        restored["message"] if not restored["ok"] else "") if p]
    doc = {"schema": BENCH_SCHEMA, "ok": not problems, "problems": problems, "workdir": str(session.workdir.root),
           "profile": session.profile.name, "run_id": run.run_id, "started_at": run.started_at,
           "finished_at": now_utc(), "matrix": session.plan.to_dict(), "order": run.order,
           "servers": run.servers, "counts": counts, "rows": run.rows, "summary": summary(run.rows),
           "best": {shape: c.to_dict() for shape, c in choices.items()}, "lossless": same_text,
           "applied": applied, "restore": restored,
           "files": {"results": str(session.results_file), "markdown": str(bench_dir / MARKDOWN_NAME),
                     "chart": str(bench_dir / CHART_NAME), "document": str(bench_dir / DOCUMENT_NAME),
                     "raw_dir": str(session.raw_dir), "lossless_reference": reference}}
    session.tell("writing the report and chart")
    write_markdown(bench_dir / MARKDOWN_NAME, doc)
    write_chart(bench_dir / CHART_NAME, run.rows, f"{session.profile.name}: run {run.run_id}")
    write_document(bench_dir / DOCUMENT_NAME, doc)
    return doc
