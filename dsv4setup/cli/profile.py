"""`dsv4setup profile list|show|validate|schema|import-recipe`: the hardware profiles.

The profile core (pydantic, YAML) is imported inside the commands: every `dsv4setup` start
imports this module, most never run it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, SetOpt, WorkdirOpt, err, out, workdir_from
from dsv4setup.cli.doctor import SnapshotOpt
from dsv4setup.cli.output import Document, emit, emit_json
from dsv4setup.core.errors import EXIT_FAILED, EXIT_USAGE, UsageError
from dsv4setup.core.workdir import Workdir

if TYPE_CHECKING:
    from dsv4setup.profiles.recipe import ImportedProfile

profile_app = typer.Typer(name="profile", no_args_is_help=True, help="Hardware profiles: list, show, validate, import.")
app.add_typer(profile_app, name="profile")

def _hardware_text(match: dict[str, Any]) -> str:
    if match["cpu_only"]:
        return f"CPU only ({match['arch']})"
    count = match["gpu_count"] or "any"
    more = f" (of ≥{match['min_gpu_count']})" if match["min_gpu_count"] else ""
    cc = "/".join(match["compute_capability"]) or "any SM"
    return f"{count}x /{match['gpu_name'] or '.*'}/{more}, SM {cc}, {match['interconnect']}, {match['arch']}"


@profile_app.command("list")
def list_(workdir: WorkdirOpt = None, json_: JsonOpt = False) -> None:
    """List the shipped profiles (and the workdir's own) with the hardware each one is for."""
    from dsv4setup.profiles.loader import profile_list_doc

    emit(profile_list_doc(workdir_from(workdir)), json_, _print_list)


def _print_list(doc: Document) -> None:
    rows = doc["profiles"]
    table = Table(title="profiles", title_justify="left")
    for col in ("name", "hardware", "TP", "MTP k", "presets", "verified"):
        table.add_column(col, overflow="fold")
    for row in rows:
        presets = ", ".join(f"[bold]{p}[/]" if p == row["preset"] else p for p in row["presets"]) or "-"
        table.add_row(row["name"] + ("" if row["shipped"] else " (workdir)"), _hardware_text(row["match"]),
                      str(row["tensor_parallel_size"]) + (" (multi-node)" if row["multinode"] else ""),
                      str(row["num_speculative_tokens"]), presets,
                      "yes" if row["verified"] else "[yellow]no[/]")
    out.print(table)
    err.print("`dsv4setup profile show NAME` prints one with its sources; `dsv4setup doctor` picks one for "
              "this machine", highlight=False)


DerivedOpt = Annotated[bool, typer.Option(
    "--derived", help="Print the profile derived for this machine's GPUs as a profile file (YAML; --json: "
                      "dsv4setup.profile-derived/1): save it, edit it, pass it with --profile FILE.")]


@profile_app.command("show")
def show(
    name: Annotated[str | None, typer.Argument(help="Profile name or file; default: the workdir's profile.")] = None,
    workdir: WorkdirOpt = None,
    set_: SetOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Also list the values left at their defaults.")] = False,
    derived: DerivedOpt = False,
    snapshot: SnapshotOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show a profile as this workdir would run it: every value with its origin, and the serve command."""
    from dsv4setup.core.state import load_state
    from dsv4setup.preflight.snapshot import take_snapshot
    from dsv4setup.profiles.resolve import resolve_profile
    from dsv4setup.serve.command import render_profile_show

    wd = workdir_from(workdir)
    if derived or snapshot is not None:
        _show_derived(wd, name, snapshot, json_)
        return
    doc = render_profile_show(resolve_profile(wd, name, set_ or [], probe=take_snapshot), wd,
                              load_state(wd.state_file))
    emit(doc, json_, lambda d: _print_show(d, all_))


def _show_derived(wd: Workdir, name: str | None, snapshot: Path | None, json_: bool) -> None:
    """`show --derived [--snapshot FILE]`: the profile derived for this machine (or the snapshot's)."""
    from dsv4setup.preflight.snapshot import load_snapshot, take_snapshot
    from dsv4setup.profiles.derive import derive_for, derived_doc, derived_yaml

    if name is not None:
        raise UsageError("--derived prints the profile derived for the machine: it takes no profile name",
                         fix="drop NAME, or drop --derived to show that profile")
    derivation = derive_for(load_snapshot(snapshot) if snapshot is not None else take_snapshot(wd))

    def human(_doc: Document) -> None:
        """The profile file on stdout (to save and edit); why there is none, or why it does not fit, on stderr."""
        if derivation.profile is None:
            err.print(f"nothing to derive: {derivation.why_not}", highlight=False)
            return
        sys.stdout.write(derived_yaml(derivation))
        if not derivation.fits:
            err.print(f"[bold red]{derivation.profile.name} does not fit:[/] {derivation.notes[-1]}", highlight=False)

    emit(derived_doc(derivation), json_, human)
    if derivation.profile is None or not derivation.fits:
        raise typer.Exit(EXIT_FAILED)


def _print_show(doc: Document, all_: bool) -> None:
    from dsv4setup.profiles.overrides import flatten

    verified = "[green]verified[/]" if doc["verified"] else "[yellow]not verified[/]"
    out.print(f"[bold]{doc['name']}[/] ({verified}; chosen by {doc['selected_by']}; file {doc['file']})",
              highlight=False)
    out.print(doc["description"], highlight=False)
    out.print(f"[dim]source: {doc['source']}[/]", highlight=False)
    kept = doc["workdir_overrides"]
    if kept["keys"]:
        out.print(f"[bold]from {kept['file']}[/] (kept by `profile set`, removed by `profile unset KEY`): "
                  + ", ".join(kept["keys"]), highlight=False)
    values = flatten(doc["profile"])
    table = Table(title_justify="left", title="values" + ("" if all_ else " (defaults hidden; --all shows them)"))
    for col in ("key", "value", "origin"):
        table.add_column(col, overflow="fold")
    for key, origin in doc["origins"].items():
        if key in HEADER_KEYS or key.startswith("presets.") or (origin == "default" and not all_):
            continue
        style = "" if origin.startswith("profile:") else "dim" if origin == "default" else "bold cyan"
        table.add_row(key, repr(values.get(key)) if isinstance(values.get(key), str) else str(values.get(key)),
                      f"[{style}]{_short_origin(origin)}[/]" if style else _short_origin(origin))
    out.print(table)
    presets = doc["profile"]["presets"]
    if presets:
        listed = ", ".join(f"{name} ({p['max_model_len']} tokens, {p['max_num_seqs']} seqs"
                           + (f", {p['gpu_memory_utilization']} mem" if p["gpu_memory_utilization"] else "") + ")"
                           for name, p in presets.items())
        out.print(f"[bold]presets[/]: {listed}; active: {doc['preset'] or 'none'} (--set preset=NAME)",
                  highlight=False)
    out.print("[bold]serve command[/] (argv, exec'd without a shell):")
    out.print("  " + doc["serve"]["command"], markup=False, highlight=False, soft_wrap=True)
    for node in doc["nodes"]:
        out.print(f"[bold]node {node['name']}[/] ({node['role']}):", highlight=False)
        for cmd in sorted(node["commands"], key=lambda c: c["order"]):
            out.print(f"  {cmd['order']}. {cmd['purpose']}:", highlight=False)
            out.print("     " + cmd["command"], markup=False, highlight=False, soft_wrap=True)
    for note in doc["nodes"][0]["notes"] if doc["nodes"] else []:
        out.print(f"[yellow]note:[/] {note}", highlight=False)


HEADER_KEYS = ("schema", "name", "description", "source", "verified")


def _short_origin(origin: str) -> str:
    kind, _, where = origin.partition(":")
    return f"{kind}:{Path(where).name}" if kind == "profile" else origin


@profile_app.command("validate")
def validate(
    files: Annotated[list[Path] | None, typer.Argument(
        help="Profile files, or a workdir's dsv4setup.yaml; default: every shipped and workdir profile.")] = None,
    workdir: WorkdirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Check profiles against the schema; each problem is reported as file:line: key: what was expected."""
    from dsv4setup.preflight.snapshot import take_snapshot
    from dsv4setup.profiles.validate import validate_doc

    doc = validate_doc(workdir_from(workdir), files, probe=take_snapshot)
    emit(doc, json_, _print_validate)
    if not doc["ok"]:
        raise typer.Exit(EXIT_USAGE)


def _print_validate(doc: Document) -> None:
    for r in doc["results"]:
        err.print(f"[green]ok[/] {r['file']} ({r['name']})" if r["ok"] else f"[bold red]invalid[/] {r['file']}",
                  highlight=False)
        for issue in r["issues"]:
            err.print(f"  {issue['where']}: {issue['key'] or '(top level)'}: {issue['message']}",
                      markup=False, highlight=False)


@profile_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of profile files (point your editor's YAML plugin at it)."""
    from dsv4setup.profiles.model import json_schema

    emit_json(json_schema())


@profile_app.command("import-recipe")
def import_recipe_cmd(
    file: Annotated[Path, typer.Argument(help="A vllm-project/recipes model YAML, e.g. DeepSeek-V4-Flash.yaml.")],
    hardware: Annotated[str, typer.Option("--hardware", help="Recipe hardware key: h200, b200, rtx_pro_6000, ...")],
    out_: Annotated[str | None, typer.Option(
        "--out", help="Where to write the profile; '-' prints it; default: <workdir>/profiles/NAME.yaml.")] = None,
    name: Annotated[str | None, typer.Option(help="Profile name (default: <recipe slug>-<hardware>).")] = None,
    tp: Annotated[int | None, typer.Option("--tp", min=1, help="Tensor-parallel size (default: per hardware).")] = None,
    strategy: Annotated[str | None, typer.Option(help="Also apply strategy_overrides.NAME of the recipe.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    workdir: WorkdirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Write a profile from a vllm-project/recipes model file, applying its overrides for one hardware key."""
    from dsv4setup.profiles.recipe import import_recipe_to

    wd = workdir_from(workdir)
    imported = import_recipe_to(wd, file, hardware, out=out_, name=name, tp=tp, strategy=strategy, force=force)
    emit(imported.to_doc(), json_, lambda _doc: _print_import(imported, hardware, wd))


def _print_import(imported: ImportedProfile, hardware: str, wd: Workdir) -> None:
    from dsv4setup.profiles.loader import user_profiles_dir

    result, target = imported.result, imported.target
    if target is None:
        sys.stdout.write(result.yaml_text)
    for part in result.applied:
        err.print(f"applied {part.section}: {' '.join(part.args) or part.env}", markup=False, highlight=False)
    for drop in result.dropped:
        err.print(f"[yellow]dropped[/] {drop['arg']} ({drop['from']}): {drop['reason']}", highlight=False)
    if result.added:
        err.print(f"added for {hardware}: {result.added}", markup=False, highlight=False)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)
    if target is not None:
        use = f"--profile {result.profile.name}" if target.parent == user_profiles_dir(wd) else f"--profile {target}"
        err.print(f"wrote {target}; use it with `dsv4setup plan {use}`", highlight=False)


@profile_app.command("set")
def set_(
    items: Annotated[list[str], typer.Argument(help="KEY=VALUE, e.g. serve.max_model_len=131072 (like --set).")],
    workdir: WorkdirOpt = None,
    profile: Annotated[str | None, typer.Option("--profile", "-p", help="Profile to check the values against.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Keep overrides for this workdir: write them into its dsv4setup.yaml (checked first)."""
    from dsv4setup.preflight.snapshot import take_snapshot
    from dsv4setup.profiles.resolve import persist_sets, profile_set_doc

    wd = workdir_from(workdir)
    keys = [item.partition("=")[0] for item in items]
    emit(profile_set_doc(wd, persist_sets(wd, profile, items, probe=take_snapshot), keys), json_,
         lambda doc: err.print(f"wrote {', '.join(keys)} to {doc['file']}; `dsv4setup plan` shows the result"))


@profile_app.command("unset")
def unset(
    keys: Annotated[list[str], typer.Argument(help="KEY as in `profile set`, e.g. serve.port.")],
    workdir: WorkdirOpt = None,
    profile: Annotated[str | None, typer.Option("--profile", "-p", help="Profile to check the result against.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Remove overrides kept by `profile set`: the profile's own value applies again."""
    from dsv4setup.preflight.snapshot import take_snapshot
    from dsv4setup.profiles.resolve import persist_unset, profile_set_doc

    wd = workdir_from(workdir)
    emit(profile_set_doc(wd, persist_unset(wd, profile, keys, probe=take_snapshot), keys), json_,
         lambda doc: err.print(f"removed {', '.join(keys)} from {doc['file']}; `dsv4setup plan` shows the result"))
