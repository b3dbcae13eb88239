"""`up`, `status`, `plan`, `logs`, `reset`: the runbook commands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from dsv4setup.cli import app
from dsv4setup.cli.common import (
    JsonOpt,
    ProfileOpt,
    SetOpt,
    WorkdirOpt,
    YesOpt,
    emit_json,
    err,
    out,
    workdir_from,
)
from dsv4setup.cli.render import RichObserver, decisions_table, status_table
from dsv4setup.core.engine import Selection
from dsv4setup.core.errors import EXIT_FAILED, UsageError
from dsv4setup.core.lock import workdir_lock
from dsv4setup.core.proc import tail_lines
from dsv4setup.core.state import backup_state, load_state, reset_steps
from dsv4setup.core.status import status_doc
from dsv4setup.runbook import RunbookRequest, build_runbook, step_names

StepOpt = Annotated[str | None, typer.Option(help="A step name.")]
StepsOpt = Annotated[list[str] | None, typer.Option(help="A step name (repeatable).")]


def resume_command(workdir: Path, profile: str) -> list[str]:
    return ["dsv4setup", "up", "--workdir", str(workdir), "--profile", profile, "--yes"]


@app.command()
def up(
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="Start at this step.")] = None,
    until: StepOpt = None,
    only: StepsOpt = None,
    redo: StepsOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    bench: Annotated[bool, typer.Option("--bench", help="Run the optional bench step at the end.")] = False,
    toolkit: Annotated[str | None, typer.Option(help="Force the CUDA toolkit route: pip or conda.")] = None,
    host: Annotated[str | None, typer.Option(help="Bind the server to this address (needs an API key).")] = None,
    node: Annotated[str | None, typer.Option(help="Multi-node profiles: this machine's node (default: the "
                                                  "one whose address this machine has).")] = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run the runbook: preflight → toolkit → vllm → patches → download → checkpoint → cluster → serve → smoke."""
    wd = workdir_from(workdir)
    if toolkit not in (None, "pip", "conda"):
        raise UsageError(f"--toolkit {toolkit}: expected pip or conda")
    options = {k: v for k, v in {"toolkit_route": toolkit, "host": host, "yes": yes, "node": node}.items()
               if v is not None}
    runbook, resolved = build_runbook(RunbookRequest(wd, profile, set_ or [], bench, options))
    selection = Selection(from_, until, tuple(only or ()), tuple(redo or ()))
    if dry_run:
        decisions = runbook.plan(selection)
        if json_:
            emit_json({"schema": "dsv4setup.up/1", "ok": True, "dry_run": True, "profile": resolved.profile.name,
                       "workdir": str(wd.root), "steps": [d.to_dict() for d in decisions]})
        else:
            out.print(decisions_table(decisions, title=f"plan for {resolved.profile.name} in {wd.root}"))
        return
    started = time.monotonic()
    result = runbook.up(selection, observer=None if json_ else RichObserver(err))
    resume = resume_command(wd.root, resolved.profile.name)
    state = load_state(wd.state_file)
    if json_:
        emit_json({"schema": "dsv4setup.up/1", "ok": result.ok, "dry_run": False,
                   "profile": resolved.profile.name, "workdir": str(wd.root),
                   "steps": status_doc(state, runbook.names)["steps"],
                   "decisions": [d.to_dict() for d in result.decisions],
                   "failed_step": result.failed_step,
                   "error": result.error.model_dump() if result.error else None,
                   "log_tail": result.log_tail, "resume": None if result.ok else resume,
                   "elapsed_s": round(time.monotonic() - started, 1)})
    elif result.ok:
        err.print(f"[bold green]all steps done[/] in {time.monotonic() - started:.0f}s ({wd.root})")
    else:
        err.print(f"resume with: [bold]{' '.join(resume)}[/]")
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def status(workdir: WorkdirOpt = None, json_: JsonOpt = False) -> None:
    """Show each step's status from the state file (no lock needed)."""
    wd = workdir_from(workdir)
    doc = status_doc(load_state(wd.state_file), step_names())
    doc["workdir"] = str(wd.root)
    if json_:
        emit_json(doc)
    else:
        out.print(status_table(doc))


@app.command()
def plan(
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    bench: Annotated[bool, typer.Option("--bench", help="Include the optional bench step.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Show what `up` would do, and the exact `vllm serve` command line and environment."""
    from dsv4setup.serve.command import render_plan

    wd = workdir_from(workdir)
    runbook, resolved = build_runbook(RunbookRequest(wd, profile, set_ or [], bench))
    decisions = runbook.plan(Selection())
    doc = render_plan(resolved, wd, load_state(wd.state_file), decisions)
    if json_:
        emit_json(doc)
        return
    out.print(decisions_table(decisions, title=f"plan for {resolved.profile.name} in {wd.root}"))
    from dsv4setup.cli.render import print_serve_plan

    print_serve_plan(out, doc)


@app.command()
def logs(
    step: Annotated[str, typer.Argument(help="Step name, e.g. serve.")],
    workdir: WorkdirOpt = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines from the end (0: all).")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
) -> None:
    """Print (or follow) a step's log."""
    wd = workdir_from(workdir)
    path = wd.log_file(step)
    if not path.exists():
        raise UsageError(f"no log for step {step!r} at {path}", hint="`dsv4setup status` lists the steps that ran")
    if lines:
        typer.echo("\n".join(tail_lines(path, lines)))
    else:
        typer.echo(path.read_text(encoding="utf-8", errors="replace"), nl=False)
    if follow:
        with path.open(encoding="utf-8", errors="replace") as fh:
            fh.seek(0, 2)
            try:
                while True:
                    chunk = fh.readline()
                    if chunk:
                        typer.echo(chunk, nl=False)
                    else:
                        time.sleep(0.5)
            except KeyboardInterrupt:
                return


@app.command()
def reset(
    workdir: WorkdirOpt = None,
    step: StepsOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Move the whole state file aside (kept as a backup).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Forget a step's record (it runs again), or move the whole state aside. Deletes nothing else."""
    wd = workdir_from(workdir)
    if not all_ and not step:
        raise UsageError("say what to reset: --step STEP (repeatable) or --all")
    with workdir_lock(wd.lock_file, "reset"):
        if all_:
            backup = backup_state(wd.state_file)
            doc = {"schema": "dsv4setup.reset/1", "ok": True, "backup": str(backup) if backup else None,
                   "steps": "all"}
        else:
            reset_steps(wd.state_file, list(step or []))
            doc = {"schema": "dsv4setup.reset/1", "ok": True, "backup": None, "steps": list(step or [])}
    if json_:
        emit_json(doc)
    else:
        err.print(f"reset {doc['steps']}" + (f"; old state kept at {doc['backup']}" if doc["backup"] else ""))

