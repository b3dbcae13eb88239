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
from dsv4setup.cli.common import JsonOpt, SetOpt, WorkdirOpt, emit_json, err, out, workdir_from
from dsv4setup.core.errors import EXIT_USAGE, UsageError
from dsv4setup.core.workdir import Workdir

if TYPE_CHECKING:
    from dsv4setup.profiles.model import Profile

profile_app = typer.Typer(name="profile", no_args_is_help=True, help="Hardware profiles: list, show, validate, import.")
app.add_typer(profile_app, name="profile")

LIST_SCHEMA = "dsv4setup.profile-list/1"
SHOW_SCHEMA = "dsv4setup.profile-show/2"
VALIDATE_SCHEMA = "dsv4setup.profile-validate/1"


def _summary(profile: Profile, path: Path, shipped: bool) -> dict[str, Any]:
    return {"name": profile.name, "description": profile.description, "verified": profile.verified,
            "source": profile.source, "file": str(path), "shipped": shipped,
            "match": profile.match.model_dump(mode="json"),
            "tensor_parallel_size": profile.serve.tensor_parallel_size,
            "num_speculative_tokens": profile.spec.num_speculative_tokens,
            "preset": profile.preset, "presets": list(profile.presets), "multinode": profile.multinode is not None}


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
    from dsv4setup.profiles.loader import load_named_file, profile_index, shipped_profile_files

    wd = workdir_from(workdir)
    shipped = set(shipped_profile_files())
    rows = [_summary(load_named_file(path), path, path in shipped) for path in profile_index(wd).values()]
    if json_:
        emit_json({"schema": LIST_SCHEMA, "profiles": rows})
        return
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


@profile_app.command("show")
def show(
    name: Annotated[str | None, typer.Argument(help="Profile name or file; default: the workdir's profile.")] = None,
    workdir: WorkdirOpt = None,
    set_: SetOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Also list the values left at their defaults.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Show a profile as this workdir would run it: every value with its origin, and the serve command."""
    from dsv4setup.core.state import load_state
    from dsv4setup.profiles.resolve import resolve_profile
    from dsv4setup.serve.command import render_nodes, render_serve

    wd = workdir_from(workdir)
    resolved = resolve_profile(wd, name, set_ or [])
    profile = resolved.profile
    outputs = {step: dict(rec.outputs) for step, rec in load_state(wd.state_file).steps.items()}
    serve = render_serve(profile, wd, outputs)
    doc = {"schema": SHOW_SCHEMA, "name": profile.name, "file": str(resolved.source_file),
           "selected_by": resolved.selected_by, "preset": resolved.preset, "verified": profile.verified,
           "source": profile.source, "description": profile.description, "profile": profile.document(),
           "origins": resolved.origins, "serve": serve.to_dict(), "nodes": render_nodes(profile, wd, serve),
           "workdir_overrides": workdir_overrides(wd, resolved.origins)}
    if json_:
        emit_json(doc)
        return
    _print_show(doc, all_)


def _print_show(doc: dict[str, Any], all_: bool) -> None:
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


def workdir_overrides(wd: Workdir, origins: dict[str, str]) -> dict[str, Any]:
    """Which values come from the workdir's dsv4setup.yaml."""
    return {"file": str(wd.overrides_file) if wd.overrides_file.exists() else None,
            "keys": sorted(k for k, origin in origins.items() if origin.startswith("workdir:"))}


HEADER_KEYS = ("schema", "name", "description", "source", "verified")


def _short_origin(origin: str) -> str:
    kind, _, where = origin.partition(":")
    return f"{kind}:{Path(where).name}" if kind == "profile" else origin


def _validate_one(path: Path, named: bool) -> dict[str, Any]:
    """One file: a profile (named: its name must match the file), or a workdir's dsv4setup.yaml."""
    from dsv4setup.profiles.loader import ProfileError, load_named_file, load_profile_file
    from dsv4setup.profiles.resolve import resolve_profile

    try:
        if path.name == Workdir(path.parent).overrides_file.name:
            name = resolve_profile(Workdir(path.parent.absolute()), None, []).profile.name
        else:
            name = (load_named_file(path) if named else load_profile_file(path)).name
    except ProfileError as exc:
        return {"file": str(path), "name": None, "ok": False, "issues": [i.to_dict() for i in exc.issues]}
    except UsageError as exc:
        return {"file": str(path), "name": None, "ok": False,
                "issues": [{"where": str(path), "key": "", "message": exc.message}]}
    return {"file": str(path), "name": name, "ok": True, "issues": []}


@profile_app.command("validate")
def validate(
    files: Annotated[list[Path] | None, typer.Argument(
        help="Profile files, or a workdir's dsv4setup.yaml; default: every shipped and workdir profile.")] = None,
    workdir: WorkdirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Check profiles against the schema; each problem is reported as file:line: key: what was expected."""
    from dsv4setup.profiles.loader import shipped_profile_files, user_profiles_dir

    wd = workdir_from(workdir)
    paths = list(files or [*shipped_profile_files(), *sorted(user_profiles_dir(wd).glob("*.yaml"))])
    if not files and wd.overrides_file.exists():
        paths.append(wd.overrides_file)
    results = [_validate_one(p, named=not files) for p in paths]
    ok = all(r["ok"] for r in results)
    if json_:
        emit_json({"schema": VALIDATE_SCHEMA, "ok": ok, "results": results})
    else:
        for r in results:
            err.print(f"[green]ok[/] {r['file']} ({r['name']})" if r["ok"] else f"[bold red]invalid[/] {r['file']}",
                      highlight=False)
            for issue in r["issues"]:
                err.print(f"  {issue['where']}: {issue['key'] or '(top level)'}: {issue['message']}",
                          markup=False, highlight=False)
    if not ok:
        raise typer.Exit(EXIT_USAGE)


@profile_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of profile files (point your editor's YAML plugin at it)."""
    import json

    from dsv4setup.profiles.model import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


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
    from dsv4setup.core.fsutil import atomic_write_text
    from dsv4setup.profiles.loader import shipped_profile_files, user_profiles_dir
    from dsv4setup.profiles.recipe import IMPORT_SCHEMA, import_recipe

    wd = workdir_from(workdir)
    result = import_recipe(file, hardware, name=name, tp=tp, strategy=strategy)
    profile = result.profile
    if profile.name in {p.stem for p in shipped_profile_files()}:
        raise UsageError(f"profile name {profile.name!r} is taken by a shipped profile", hint="pass --name NEW")
    target = None if out_ == "-" else Path(out_) if out_ else user_profiles_dir(wd) / f"{profile.name}.yaml"
    if target is not None:
        if target.exists() and not force:
            raise UsageError(f"{target} exists", hint="pass --force to overwrite it, or --out another file")
        atomic_write_text(target, result.yaml_text)
    if json_:
        emit_json({"schema": IMPORT_SCHEMA, "ok": True, "name": profile.name,
                   "out": str(target) if target else None, "profile": profile.document(), **result.to_dict()})
        return
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
        use = f"--profile {profile.name}" if target.parent == user_profiles_dir(wd) else f"--profile {target}"
        err.print(f"wrote {target}; use it with `dsv4setup plan {use}`", highlight=False)


@profile_app.command("set")
def set_(
    items: Annotated[list[str], typer.Argument(help="KEY=VALUE, e.g. serve.max_model_len=131072 (like --set).")],
    workdir: WorkdirOpt = None,
    profile: Annotated[str | None, typer.Option("--profile", "-p", help="Profile to check the values against.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Keep overrides for this workdir: write them into its dsv4setup.yaml (checked first)."""
    from dsv4setup.profiles.resolve import persist_sets

    wd = workdir_from(workdir)
    resolved = persist_sets(wd, profile, items)
    keys = [item.partition("=")[0] for item in items]
    if json_:
        emit_json({"schema": "dsv4setup.profile-set/1", "ok": True, "file": str(wd.overrides_file),
                   "profile": resolved.profile.name, "set": {k: resolved.origins.get(k) for k in keys}})
    else:
        err.print(f"wrote {', '.join(keys)} to {wd.overrides_file}; `dsv4setup plan` shows the result")


@profile_app.command("unset")
def unset(
    keys: Annotated[list[str], typer.Argument(help="KEY as in `profile set`, e.g. serve.port.")],
    workdir: WorkdirOpt = None,
    profile: Annotated[str | None, typer.Option("--profile", "-p", help="Profile to check the result against.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Remove overrides kept by `profile set`: the profile's own value applies again."""
    from dsv4setup.profiles.resolve import persist_unset

    wd = workdir_from(workdir)
    resolved = persist_unset(wd, profile, keys)
    if json_:
        emit_json({"schema": "dsv4setup.profile-set/1", "ok": True, "file": str(wd.overrides_file),
                   "profile": resolved.profile.name, "set": {k: resolved.origins.get(k) for k in keys}})
    else:
        err.print(f"removed {', '.join(keys)} from {wd.overrides_file}; `dsv4setup plan` shows the result")
