"""`dsv4setup patches status|apply|revert [--target DIR] [--json]`: vLLM patches as data."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, WorkdirOpt, err, out, workdir_from
from dsv4setup.cli.output import emit
from dsv4setup.core.errors import EXIT_FAILED
from dsv4setup.core.lock import workdir_lock
from dsv4setup.core.workdir import Workdir
from dsv4setup.patches.apply import apply_patches, revert_patches
from dsv4setup.patches.manifest import load_manifest
from dsv4setup.patches.report import Action, patches_doc
from dsv4setup.patches.status import PatchReport, check_patches
from dsv4setup.patches.target import Target, default_target, find_target

patches_app = typer.Typer(no_args_is_help=True, help="Status, apply and revert of dsv4setup's vLLM patches.")
app.add_typer(patches_app, name="patches")

TargetOpt = Annotated[Path | None, typer.Option(
    "--target", help="A site-packages with vLLM installed, or a vLLM source tree. "
                     "Default: the serving venv of the workdir.", show_default=False)]
IdsArg = Annotated[list[str] | None, typer.Argument(
    help="Patch ids (see `dsv4setup patches status`). Default: every one that applies.", show_default=False)]

STATUS_STYLE = {"applied": "green", "upstream": "cyan", "applicable": "yellow", "not-applicable": "dim",
                "conflict": "bold red"}


def _logger(as_json: bool) -> Callable[[str], None]:
    """Progress lines on stderr for people; silent with --json (the document says what changed)."""
    return (lambda _m: None) if as_json else (lambda m: err.print(m, highlight=False))


def _resolve(workdir: Path | None, target: Path | None) -> tuple[Workdir, Target]:
    wd = workdir_from(workdir)
    return wd, (find_target(target) if target is not None else default_target(wd))


@contextlib.contextmanager
def _locked_if_serving_venv(wd: Workdir, target: Target, command: str) -> Iterator[None]:
    """Changing the workdir's own vLLM takes the workdir lock (no `up` may run meanwhile)."""
    if target.root.is_relative_to(wd.root):
        with workdir_lock(wd.lock_file, command):
            yield
    else:
        yield


def _table(reports: list[PatchReport], target: Target) -> Table:
    table = Table(title=f"patches for {target.distribution or 'vLLM'} {target.version or '?'} in {target.root}")
    for column in ("id", "status", "files", "detail"):
        table.add_column(column, overflow="fold")
    for r in reports:
        style = STATUS_STYLE.get(r.status, "")
        table.add_row(r.id, f"[{style}]{r.status}[/]" if style else r.status, "\n".join(r.files), r.detail)
    return table


def _emit(action: Action, target: Target, reports: list[PatchReport], changed: list[str], as_json: bool) -> None:
    emit(patches_doc(action, target, reports, changed), as_json, lambda _doc: _print(action, target, reports, changed))


def _print(action: Action, target: Target, reports: list[PatchReport], changed: list[str]) -> None:
    out.print(_table(reports, target))
    if action != "status":
        verb = "applied" if action == "apply" else "reverted"
        err.print(f"{verb}: {', '.join(changed)}" if changed else f"nothing to do: no patch {verb}", highlight=False)


@patches_app.command("status")
def status(target: TargetOpt = None, workdir: WorkdirOpt = None, json_: JsonOpt = False) -> None:
    """Status of every patch: applied, applicable, upstream, not-applicable or conflict (exit 1 on a conflict)."""
    _wd, tgt = _resolve(workdir, target)
    manifest = load_manifest()
    reports = check_patches(list(manifest.patches), tgt)
    _emit("status", tgt, reports, [], json_)
    if any(r.status == "conflict" for r in reports):
        raise typer.Exit(EXIT_FAILED)


@patches_app.command("apply")
def apply(ids: IdsArg = None, target: TargetOpt = None, workdir: WorkdirOpt = None, json_: JsonOpt = False) -> None:
    """Apply patches atomically (all or nothing); a foreign-modified file stops everything unchanged."""
    wd, tgt = _resolve(workdir, target)
    manifest = load_manifest()
    with _locked_if_serving_venv(wd, tgt, "patches apply"):
        result = apply_patches(manifest, tgt, ids or None, log=_logger(json_))
    _emit("apply", tgt, result.reports, result.changed, json_)


@patches_app.command("revert")
def revert(ids: IdsArg = None, target: TargetOpt = None, workdir: WorkdirOpt = None, json_: JsonOpt = False) -> None:
    """Restore the byte-identical originals of applied patches (checked against the wheel's RECORD)."""
    wd, tgt = _resolve(workdir, target)
    manifest = load_manifest()
    with _locked_if_serving_venv(wd, tgt, "patches revert"):
        result = revert_patches(manifest, tgt, ids or None, log=_logger(json_))
    _emit("revert", tgt, result.reports, result.changed, json_)
