"""`serve`, `down`, `smoke`, `tiny-model`: the server commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, ProfileOpt, SetOpt, WorkdirOpt, err, out, workdir_from
from dsv4setup.cli.output import Document, emit
from dsv4setup.cli.progress import RichObserver
from dsv4setup.core.errors import EXIT_FAILED, StepError, UsageError
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Selection, UpResult
from dsv4setup.runbook import RunbookRequest, build_runbook

HostOpt = Annotated[str | None, typer.Option(
    help="Bind this address instead of 127.0.0.1 (then an API key is required: $DSV4SETUP_API_KEY, "
         "or one generated into <workdir>/secrets/api_key).")]


def _run_step(wd: Workdir, step: str, profile: str | None, sets: list[str] | None, options: dict[str, Any],
              redo: bool, as_json: bool) -> UpResult:
    runbook, _resolved = build_runbook(RunbookRequest(wd, profile, sets or [], False, options))
    selection = Selection(only=(step,), redo=(step,) if redo else ())
    return runbook.up(selection, observer=None if as_json else RichObserver(err))


@app.command()
def serve(
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    host: HostOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Start the vLLM server (the serve step alone) and wait until it is ready."""
    from dsv4setup.serve.manager import serve_doc, server_state

    wd = workdir_from(workdir)
    result = _run_step(wd, "serve", profile, set_, {"host": host} if host else {}, False, json_)
    error = result.error.model_dump() if result.error else None
    emit(serve_doc(wd, server_state(wd), result.ok, error), json_, _print_serving)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


def _print_serving(doc: Document) -> None:
    if doc["ok"]:
        out.print(f"serving {doc['base_url']}/v1 (pid {doc['pid']}); log: {doc['log']}; stop with `dsv4setup down`",
                  highlight=False)


@app.command()
def down(
    workdir: WorkdirOpt = None,
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL.")] = 15.0,
    json_: JsonOpt = False,
) -> None:
    """Stop the server of this workdir (SIGTERM to its process group, SIGKILL after --grace) and clean up."""
    from dsv4setup.serve.manager import down as stop

    emit(stop(workdir_from(workdir), grace), json_, lambda doc: err.print(doc["message"], highlight=False))


@app.command()
def smoke(
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    lossless: Annotated[bool, typer.Option(
        "--lossless", help="Also compare the server's greedy texts with the k=0 reference the last bench on a "
                           "prompt set stored (without restarting the server); a stale reference is refused.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Smoke-test the running server: a chat completion, and MTP drafts made and accepted (from /metrics)."""
    from dsv4setup.smoke.report import read_report, report_file

    wd = workdir_from(workdir)
    result = _run_step(wd, "smoke", profile, set_, {"smoke_lossless": True} if lossless else {}, True, json_)
    path = report_file(wd)
    doc = read_report(path)
    if not doc:  # it failed before generating (no server, no usable lossless reference): a plain error
        error = result.error
        raise StepError(error.message if error else f"the smoke step wrote no report at {path}",
                        fix=error.fix if error else None, command=error.command if error else None)
    emit(doc, json_, _print_smoke)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


def _print_smoke(doc: Document) -> None:
    out.print(f"model {doc['model']} at {doc['base_url']}: {doc['completion_tokens']} tokens, "
              f"{doc['tokens_per_s']} tokens/s", highlight=False)
    out.print(f"content: {(doc['content'] or '')[:200]!r}", highlight=False, markup=False)
    mtp = doc["mtp"]
    if mtp.get("checked") and mtp.get("acceptance_rate") is not None:
        out.print(f"MTP: {mtp['accepted']:.0f}/{mtp['draft_tokens']:.0f} draft tokens accepted "
                  f"({mtp['acceptance_rate']:.1%}), mean acceptance length {mtp['mean_acceptance_length']}, "
                  f"per position {mtp['per_position_rates']}", highlight=False)
    elif not mtp.get("checked"):
        out.print(f"MTP not checked: {mtp.get('skipped_reason')}", highlight=False)
    for differing in (doc.get("lossless") or {}).get("differing", []):
        out.print(f"lossless: prompt #{differing['index']} {differing['prompt']!r} differs at character "
                  f"{differing['position']}: reference {differing['reference']!r}, now {differing['candidate']!r}",
                  highlight=False, markup=False)
    for check in doc["checks"]:
        mark = "[bold red]FAIL[/]" if check["status"] == "fail" else "[green]ok[/]  "
        out.print(f"{mark} {check['id']}: {check['summary']}", highlight=False)
        if check.get("fix"):
            out.print(f"     fix: {check['fix']}", highlight=False)


@app.command("tiny-model")
def tiny_model(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the checkpoint into.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights (same seed, same bytes).")] = 0,
    kind: Annotated[str, typer.Option(
        help="easy: answers ' ok' to any prompt, every draft accepted (what cpu-tiny serves); varied: output "
             "depends on the prompt, drafts accepted only part of the time (for benchmarks).")] = "easy",
    json_: JsonOpt = False,
) -> None:
    """Write a tiny DeepSeek-V3 + MTP checkpoint (the easy one is what the cpu-tiny profile serves)."""
    from dsv4setup.tinymodel import KINDS, write_tiny_model

    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: no such tiny model", fix=f"choose one of: {', '.join(KINDS)}")
    emit(write_tiny_model(out_dir, seed, kind), json_, _print_tiny_model)


def _print_tiny_model(doc: Document) -> None:
    what = (f"it answers {doc['answer_word']!r} to any prompt" if doc["kind"] == "easy"
            else "its output depends on the prompt and its MTP drafts are accepted only part of the time")
    err.print(f"wrote {doc['path']} ({sum(f['bytes'] for f in doc['files']) / 1e6:.1f} MB, {doc['kind']}); {what}",
              highlight=False)
