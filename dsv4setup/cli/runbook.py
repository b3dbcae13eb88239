"""`up`, `status`, `plan`, `logs`, `reset`: the runbook commands."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, ProfileOpt, SetOpt, WorkdirOpt, YesOpt, err, out, workdir_from
from dsv4setup.cli.output import Document, emit
from dsv4setup.cli.progress import (
    RichObserver,
    cluster_table,
    decisions_table,
    print_serve_plan,
    print_verification,
    profile_note,
    status_table,
)
from dsv4setup.core.errors import EXIT_FAILED, UsageError
from dsv4setup.core.proc import existing_step_log
from dsv4setup.core.secrets import redact
from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir, remember
from dsv4setup.engine import Selection
from dsv4setup.runbook import (
    RunbookRequest,
    build_runbook,
    dry_run_doc,
    reset_workdir,
    status_document,
    up_doc,
)
from dsv4setup.vllm.installer import INSTALLER_CHOICES

StepOpt = Annotated[str | None, typer.Option(help="A step name.")]
StepsOpt = Annotated[list[str] | None, typer.Option(help="A step name (repeatable).")]


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
    installer: Annotated[str | None, typer.Option(
        help="Install into the venvs with uv (default, pip when uv cannot run) or pip.")] = None,
    host: Annotated[str | None, typer.Option(help="Bind the server to this address (needs an API key).")] = None,
    node: Annotated[str | None, typer.Option(help="Multi-node profiles: this machine's node (default: the "
                                                  "one whose address this machine has).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start the run in the background (own session) and "
                                         "return at once; follow it with `dsv4setup wait`.")] = False,
    sequential: Annotated[bool, typer.Option("--sequential", help="One step at a time, in order (default: "
                                             "independent steps at once, the download beside the installs).")
                          ] = False,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run the runbook: preflight → toolkit → vllm → patches → download → checkpoint → cluster → serve → smoke."""
    wd = workdir_from(workdir)
    if toolkit not in (None, "pip", "conda"):
        raise UsageError(f"--toolkit {toolkit}: expected pip or conda")
    if installer is not None and installer not in INSTALLER_CHOICES:
        raise UsageError(f"--installer {installer}: expected {', '.join(INSTALLER_CHOICES)}")
    err.print(wd.header, highlight=False)
    if detach:
        if dry_run:
            raise UsageError("--detach and --dry-run exclude each other", fix="drop one of them")
        args = [*_opt("--profile", profile), *_opts("--set", set_), *_opt("--from", from_), *_opt("--until", until),
                *_opts("--only", only), *_opts("--redo", redo), *_opt("--toolkit", toolkit), *_opt("--host", host),
                *_opt("--node", node), *_opt("--installer", installer), *(["--bench"] if bench else []),
                *(["--sequential"] if sequential else []), "--yes"]
        detach_run(wd, args, json_)
        return
    options = {k: v for k, v in {"toolkit_route": toolkit, "installer": installer, "host": host,
                                 "yes": yes, "node": node}.items() if v is not None}
    if not dry_run:
        from dsv4setup.upgrade import recover

        finished = recover(wd)  # an upgrade killed while switching: back to the generation it came from
        if finished:
            err.print(finished, highlight=False)
    runbook, resolved = build_runbook(RunbookRequest(wd, profile, set_ or [], bench, options))
    selection = Selection(from_, until, tuple(only or ()), tuple(redo or ()))
    profile_ = resolved.profile
    note = profile_note(profile_.marks())
    if note and not json_:
        err.print(note, highlight=False)
    if dry_run:
        decisions = runbook.plan(selection)
        emit(dry_run_doc(profile_, wd, decisions), json_,
             lambda _doc: out.print(decisions_table(decisions, title=f"plan for {profile_.name} in {wd.header}")))
        return
    started = time.monotonic()
    remember(wd.root)
    result = runbook.up(selection, observer=RichObserver(err), sequential=sequential)  # --json: progress on stderr
    emit(up_doc(runbook, profile_, result, time.monotonic() - started), json_, _print_up_end)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


def _print_up_end(doc: Document) -> None:
    """After the live progress: how it ended, or the command that resumes."""
    if doc["ok"]:
        err.print(f"[bold green]all steps done[/] in {doc['elapsed_s']:.0f}s ({doc['workdir']})")
    else:
        err.print(f"resume with: [bold]{' '.join(doc['resume'])}[/]")


def _opt(flag: str, value: str | None) -> list[str]:
    return [flag, value] if value is not None else []


def _opts(flag: str, values: list[str] | None) -> list[str]:
    return [arg for value in values or [] for arg in (flag, value)]


def detach_run(wd: Workdir, args: list[str], json_: bool, command: str = "up") -> None:
    """`dsv4setup COMMAND ARGS` started in the background (`--detach`), its detach document printed."""
    from dsv4setup.core.detach import describe, start_detached

    doc = describe(start_detached(wd, args, command))
    remember(wd.root)
    emit(doc, json_, _print_detached)


def _print_detached(doc: Document) -> None:
    err.print(f"started in the background: pid {doc['pid']}, progress in {doc['log']}")
    err.print(f"follow it with: [bold]{' '.join(doc['follow'])}[/]")


@app.command("wait")
def wait_(
    workdir: WorkdirOpt = None,
    timeout: Annotated[float, typer.Option(help="Return after this many seconds even if the run goes on "
                                           "(choose one below your shell's time limit).")] = 100,
    json_: JsonOpt = False,
) -> None:
    """Wait (at most --timeout seconds) for the run of this workdir; exit 10 done, 11 failed, 12 still running."""
    from dsv4setup.core.detach import wait_for_run

    wd = workdir_from(workdir)
    if timeout < 0:
        raise UsageError(f"--timeout {timeout}: expected a number of seconds >= 0")
    doc = wait_for_run(wd, timeout, lambda: status_document(wd))

    def show(d: Document) -> None:
        out.print(status_table(d["status"], wd.header))
        err.print(f"[bold]{d['outcome']}[/] after waiting {d['waited_s']:.0f}s"
                  + (f"; wait again: {' '.join(d['follow'])}" if d["follow"] else ""))

    emit(doc, json_, show)
    raise typer.Exit(doc["exit_code"])


@app.command()
def status(
    workdir: WorkdirOpt = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="The record alone: check no step on the machine "
                                            "and do not probe the server.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Show each step's status, each done step checked on the machine as a no-op `up` checks it (no lock needed)."""
    wd = workdir_from(workdir)

    def show(doc: Document) -> None:
        out.print(status_table(doc, wd.header))
        print_verification(out, doc)
        if doc["cluster"]:
            out.print(cluster_table(doc["cluster"]))
        if doc["service"]:
            unit = doc["service"]
            out.print(f"systemd unit {unit['unit']} ({unit['scope']}): {unit['active']} ({unit['sub']}), "
                      f"{unit['enabled']} at boot; `dsv4setup service status` for more", highlight=False,
                      markup=False)

    emit(status_document(wd, live=True, verify=not no_verify), json_, show)


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

    def show(doc: Document) -> None:
        out.print(decisions_table(decisions, title=f"plan for {resolved.profile.name} in {wd.header}"))
        out.print(doc["download"]["text"], markup=False, highlight=False)
        print_serve_plan(out, doc)

    emit(render_plan(resolved, wd, load_state(wd.state_file), decisions), json_, show)


@app.command()
def logs(
    step: Annotated[str, typer.Argument(help="Step name, e.g. serve.")],
    workdir: WorkdirOpt = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines from the end (0: all).")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
) -> None:
    """Print (or follow) a step's log, secrets redacted."""
    from dsv4setup.serve.logpump import rotated_files, tail_across

    path = existing_step_log(workdir_from(workdir), step)
    files = rotated_files(path)  # serve.log is rotated by size: its older parts come first
    if lines:
        typer.echo(redact("\n".join(tail_across(path, lines))))
    else:
        for file in files:
            typer.echo(redact(file.read_text(encoding="utf-8", errors="replace")), nl=False)
    if follow:
        _follow(path)


def _follow(path: Path) -> None:
    """Print what is appended to the log; when it is rotated, go on in the new file from its start."""
    fh = path.open(encoding="utf-8", errors="replace")
    fh.seek(0, 2)
    try:
        while True:
            chunk = fh.readline()
            if chunk:
                typer.echo(redact(chunk), nl=False)
                continue
            if path.exists() and path.stat().st_ino != os.fstat(fh.fileno()).st_ino:
                fh.close()
                fh = path.open(encoding="utf-8", errors="replace")
                continue
            time.sleep(0.5)
    except KeyboardInterrupt:
        return
    finally:
        fh.close()


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
    emit(reset_workdir(wd, list(step or []), all_), json_, lambda doc: err.print(
        f"reset {doc['steps']}" + (f"; old state kept at {doc['backup']}" if doc["backup"] else "")))
