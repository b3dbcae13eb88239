"""`download` and `checkpoint lint`: the checkpoint on disk, verified, and its metadata judged.

Parsing and rendering only; the work is in dsv4setup.hub and the download/checkpoint steps.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Annotated

import typer

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, ProfileOpt, SetOpt, WorkdirOpt, err, out, workdir_from
from dsv4setup.cli.output import Document, emit
from dsv4setup.core.errors import EXIT_FAILED

if TYPE_CHECKING:
    from dsv4setup.checkpoint.service import LintOutcome

STYLE = {"fail": ("✗", "bold red"), "warn": ("!", "yellow"), "pass": ("✓", "green"), "skip": ("-", "dim")}

checkpoint_app = typer.Typer(no_args_is_help=True, help="Judge a checkpoint's metadata (MTP block, dtypes, ignore "
                                                        "list, shards) locally or on the hub, headers only.")
app.add_typer(checkpoint_app, name="checkpoint")


@app.command()
def download(
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Re-hash every file against the hub's sha256 and re-fetch the bad ones.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Download the profile's checkpoint (pinned revision, resumable, verified), as the runbook's download step.

    Refuses before the first byte when the disk is too small. HF_TOKEN is used for gated repos
    and never printed. DSV4SETUP_HF_CACHE=1 downloads into the Hugging Face cache instead.
    """
    from dsv4setup.cli.progress import RichObserver
    from dsv4setup.engine import Selection
    from dsv4setup.runbook import RunbookRequest, build_runbook, download_doc

    wd = workdir_from(workdir)
    options = {"download_verify": True} if verify else {}
    runbook, resolved = build_runbook(RunbookRequest(wd, profile, set_ or [], options=options))
    selection = Selection(only=("download",), redo=("download",) if verify else ())
    result = runbook.up(selection, observer=None if json_ else RichObserver(err))
    emit(download_doc(runbook, resolved.profile.name, result), json_, _print_download)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


def _print_download(doc: Document) -> None:
    from rich.markup import escape

    outputs, fetched_now = doc["outputs"], doc["action"] == "run"
    if outputs is None:  # failed: the progress display already showed why
        return
    from dsv4setup.download.disk import human

    rows = [("path", outputs.get("path")), ("repo", outputs.get("repo")), ("revision", outputs.get("revision")),
            ("files", outputs.get("files")), ("size", human(outputs.get("bytes") or 0)),
            ("fetched now", (human(outputs["fetched_bytes"]) if fetched_now else "nothing (already verified)")
             if "fetched_bytes" in outputs else None),
            ("verified", outputs.get("verified")),
            ("re-fetched", ", ".join(outputs.get("refetched") or []) or None)]
    for key, value in rows:
        if value is not None:
            out.print(f"[bold]{key:>12}[/] {escape(str(value))}", highlight=False)


@checkpoint_app.command("lint")
def lint_command(
    target: Annotated[str, typer.Argument(help="A checkpoint directory, or a hub repo ORG/NAME[@REVISION].",
                                          show_default=False)],
    fix: Annotated[bool, typer.Option(
        "--fix", help="Write a corrected config.json copy to <workdir>/checkpoint-config/ (never edits the "
                      "checkpoint); serve it with --hf-config-path.")] = False,
    vllm_version: Annotated[str | None, typer.Option(
        "--vllm-version", help="Judge dtype mixes against this vLLM (default: the pinned one).")] = None,
    no_mtp: Annotated[bool, typer.Option(
        "--no-mtp", help="The checkpoint is not meant for MTP: missing MTP is not a failure.")] = False,
    workdir: WorkdirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Lint config.json, the index and every shard header; remote repos cost a few MB of Range reads.

    Exit 0 when no check failed (warnings included), 1 when one did, 2 for a bad target.
    """
    from dsv4setup.checkpoint.service import lint_doc, parse_target, run_lint
    from dsv4setup.checkpoint.step import config_copy_dir

    parsed = parse_target(target)
    fix_dir = config_copy_dir(workdir_from(workdir)) if fix else None
    with nullcontext() if json_ else err.status(f"reading the metadata of {target}"):
        outcome = run_lint(parsed, vllm_version=vllm_version, expect_mtp=not no_mtp, fix_dir=fix_dir)
    emit(lint_doc(outcome), json_, lambda _doc: _render_lint(outcome, fix))
    if not outcome.report.ok:
        raise typer.Exit(EXIT_FAILED)


def _render_lint(outcome: LintOutcome, fix_requested: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    report = outcome.report
    title = f"checkpoint lint: {outcome.target.text}"
    if outcome.meta.commit and outcome.target.kind == "remote":
        title += f" (commit {outcome.meta.commit[:12]})"
    table = Table(title=f"{title}, against vLLM {outcome.vllm_version}", title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result", ratio=3, overflow="fold")
    table.add_column("fix", ratio=2, overflow="fold")
    order = {"fail": 0, "warn": 1, "pass": 2, "skip": 3}
    for check in sorted(report.checks, key=lambda c: order[c.status]):
        mark, style = STYLE[check.status]
        table.add_row(f"[{style}]{mark}[/]", f"[{style}]{check.id}[/]", escape(check.summary), escape(check.fix or ""))
    out.print(table)
    if outcome.fix is not None:
        err.print(f"[bold]corrected config written[/] to {escape(str(outcome.fix.hf_config_path))}: serve with "
                  f"--hf-config-path {escape(str(outcome.fix.hf_config_path))}", highlight=False)
    elif fix_requested:
        err.print("nothing to fix in config.json", highlight=False)
    failures = report.failed()
    warnings = [c for c in report.checks if c.status == "warn"]
    if failures:
        err.print(f"[bold red]{len(failures)} check(s) failed[/], {len(warnings)} warning(s)", highlight=False)
    else:
        err.print(f"[bold green]no check failed[/] ({len(warnings)} warning(s))", highlight=False)
