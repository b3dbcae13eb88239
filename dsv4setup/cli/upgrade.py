"""`upgrade`, `rollback`, `generations`: the serving venv's generations (dsv4setup/upgrade.py does the work)."""

from __future__ import annotations

from typing import Annotated

import typer

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, ProfileOpt, SetOpt, WorkdirOpt, YesOpt, err, out, workdir_from
from dsv4setup.cli.output import Document, emit
from dsv4setup.cli.progress import RichObserver
from dsv4setup.cli.runbook import detach_run
from dsv4setup.core.errors import EXIT_FAILED, UsageError
from dsv4setup.core.workdir import Workdir, remember
from dsv4setup.upgrade import SwitchRequest, generations_doc, switch

NodeOpt = Annotated[str | None, typer.Option(help="Multi-node profiles: this machine's node (workers first, the "
                                               "head last).")]
DetachOpt = Annotated[bool, typer.Option("--detach", help="Start it in the background (own session) and return at "
                                         "once; follow it with `dsv4setup wait`.")]


def _print_switch(doc: Document) -> None:
    if doc["ok"]:
        err.print(f"[bold green]{doc['kind']} done[/]: generation {doc['serving']} (vLLM {doc['to']['vllm']}) "
                  "serves and passed smoke")
        return
    failed = doc["failed"] or {}
    err.print(f"[bold red]{doc['kind']} failed[/] at {failed.get('step')}: {failed.get('message')}", highlight=False)
    for line in failed.get("log_tail") or []:
        err.print(f"  {line}", highlight=False, markup=False)
    err.print(f"log: {failed.get('log')}", highlight=False)
    err.print(f"serving: {doc['serving'] or 'nothing: run `dsv4setup up`'}", highlight=False)


def _options(yes: bool, node: str | None) -> dict[str, object]:
    return {"yes": yes, **({"node": node} if node else {})}


def _run_switch(wd: Workdir, request: SwitchRequest, json_: bool) -> None:
    remember(wd.root)
    doc = switch(request, RichObserver(err), lambda msg: err.print(msg, highlight=False))
    emit(doc, json_, _print_switch)
    if not doc["ok"]:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def upgrade(
    vllm: Annotated[str, typer.Option("--vllm", help="The vLLM version to move to, e.g. 0.33.0.")],
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    bench: Annotated[bool, typer.Option("--bench", help="Also run the bench step on the new generation.")] = False,
    node: NodeOpt = None,
    detach: DetachOpt = False,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Build a new serving venv generation beside the current one, switch the server to it and smoke it; on any
    failure switch back (exit 1, the old server serving)."""
    wd = workdir_from(workdir)
    err.print(wd.header, highlight=False)
    if not vllm.strip():
        raise UsageError("--vllm: expected a version, e.g. 0.33.0")
    if detach:
        args = ["--vllm", vllm, *(["--profile", profile] if profile else []),
                *[a for s in set_ or [] for a in ("--set", s)], *(["--bench"] if bench else []),
                *(["--node", node] if node else [])]
        detach_run(wd, [*args, "--yes"], json_, "upgrade")
        return
    _run_switch(wd, SwitchRequest(wd, profile, set_ or [], vllm, bench, _options(yes, node)), json_)


@app.command()
def rollback(
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
    node: NodeOpt = None,
    detach: DetachOpt = False,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Switch the server back to the previous generation (stop, start, smoke), and keep its vLLM version."""
    wd = workdir_from(workdir)
    err.print(wd.header, highlight=False)
    if detach:
        detach_run(wd, [*(["--profile", profile] if profile else []), *(["--node", node] if node else []), "--yes"],
                   json_, "rollback")
        return
    _run_switch(wd, SwitchRequest(wd, profile, [], None, False, _options(yes, node)), json_)


@app.command()
def generations(
    workdir: WorkdirOpt = None,
    keep: Annotated[int | None, typer.Option(help="Remove all but the newest N (never the current one nor the one "
                                             "before it; only folders proven ours).")] = None,
    json_: JsonOpt = False,
) -> None:
    """List the serving venv's generations: vLLM version, patches, created, last smoke, which is current."""
    wd = workdir_from(workdir)

    def show(doc: Document) -> None:
        from rich.table import Table

        table = Table(title=f"generations in {wd.header}")
        for column in ("name", "vLLM", "patches", "created", "last smoke", ""):
            table.add_column(column)
        for row in doc["generations"]:
            smoke = row["last_smoke"]
            table.add_row(row["name"], row["vllm"] or "?", ", ".join(row["patches"].get("applied") or []) or "-",
                          row["created_at"] or "?", f"{'ok' if smoke['ok'] else 'failed'} {smoke['at']}" if smoke
                          else "-", "current" if row["current"] else "previous" if row["previous"] else "")
        out.print(table)
        for path in doc["removed"]:
            err.print(f"removed {path}", highlight=False)
        for item in doc["refused"]:
            err.print(f"left alone {item['path']}: {item['reason']}", highlight=False)

    emit(generations_doc(wd, keep), json_, show)
