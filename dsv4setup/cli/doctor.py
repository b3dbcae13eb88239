"""`doctor`: judge this machine (or a saved snapshot) before spending an hour on builds and loads.

Imports of the core stay inside the command: the CLI imports every command module at startup.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, ProfileOpt, WorkdirOpt, err, out, workdir_from
from dsv4setup.cli.output import emit
from dsv4setup.core.errors import EXIT_FAILED, UsageError

if TYPE_CHECKING:
    from rich.table import Table

    from dsv4setup.core.finding import Finding
    from dsv4setup.core.workdir import Workdir
    from dsv4setup.preflight.report import DoctorReport
    from dsv4setup.profiles.model import Profile

SnapshotOpt = Annotated[Path | None, typer.Option(
    "--snapshot", help="Judge a saved hardware snapshot (JSON) instead of this machine.", show_default=False,
    dir_okay=False)]
SaveSnapshotOpt = Annotated[Path | None, typer.Option(
    "--save-snapshot", help="Also write the hardware snapshot to FILE (attach it to bug reports).",
    show_default=False, dir_okay=False)]

TargetWorkdirOpt = Annotated[Path | None, typer.Option(
    "--target-workdir", help="With --snapshot: the workdir on that machine (default: the one the snapshot was "
                             "taken for); the serve command and the disk check are for it.", show_default=False)]

ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Also lint a hub checkpoint ORG/NAME[@REV] from its metadata (a few MB) before downloading.",
    show_default=False)]

BandwidthOpt = Annotated[bool, typer.Option(
    "--bandwidth", help="Also time a ranged GET of the checkpoint's largest file from its repo (the profile's "
                        "model.repo, or --model) through the download's client; the rate is kept in the workdir "
                        "and `plan` uses it for the download's expected time.")]
BandwidthMbOpt = Annotated[int | None, typer.Option(
    "--bandwidth-mb", help="With --bandwidth: how many MB to fetch (default 256, at most the file's size).",
    show_default=False, min=1)]

STYLE = {"fail": ("✗", "bold red"), "warn": ("!", "yellow"), "pass": ("✓", "green"), "skip": ("-", "dim")}


@app.command()
def doctor(
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
    snapshot: SnapshotOpt = None,
    save_snapshot: SaveSnapshotOpt = None,
    model: ModelOpt = None,
    target_workdir: TargetWorkdirOpt = None,
    bandwidth: BandwidthOpt = False,
    bandwidth_mb: BandwidthMbOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Check GPUs, interconnect, driver, host and toolchain; recommend a profile, TP size, MTP k, serve args, env.

    Exit 0 when no check failed (warnings included), 1 when one did, 2 for a bad --snapshot file.
    """
    from dsv4setup.preflight.report import build_report
    from dsv4setup.preflight.select import choice_fields, select_profile, workdir_state
    from dsv4setup.preflight.snapshot import load_snapshot, take_snapshot

    wd = workdir_from(workdir)
    if not json_ and snapshot is None:
        err.print(wd.header, highlight=False)
    if target_workdir is not None and snapshot is None:
        raise UsageError("--target-workdir goes with --snapshot (a plan for another machine)",
                         fix="here, pass --workdir DIR instead")
    if bandwidth and snapshot is not None:
        raise UsageError("--bandwidth measures this machine's link, --snapshot judges another machine",
                         fix="run `dsv4setup doctor --bandwidth` on that machine")
    if bandwidth_mb is not None and not bandwidth:
        raise UsageError("--bandwidth-mb goes with --bandwidth", fix="add --bandwidth, or drop --bandwidth-mb")
    if snapshot is not None:
        snap = load_snapshot(snapshot)
    elif json_:
        snap = take_snapshot(wd)
    else:
        with err.status("probing GPUs (NVML), host and toolchain"):
            snap = take_snapshot(wd)
    if save_snapshot is not None:
        _save(save_snapshot, snap, quiet=json_)
    target = wd
    if snapshot is not None:
        from dsv4setup.preflight.other_box import aim_at_target

        snap, target = aim_at_target(snap, target_workdir)
        if not json_:
            err.print(f"plan for the other machine's {target.header}", highlight=False)
    choice = select_profile(snap, wd, profile, use_workdir=snapshot is None)
    # Checks computed elsewhere (the checkpoint lint for --model) count toward `ok` and appear
    # in the table and JSON like the built-in ones.
    judged = choice.judged()
    extra = [*_cluster_checks(judged.profile, snap, measured=snapshot is None), *_model_checks(model, json_)]
    measured = None
    if bandwidth:
        link, measured = _bandwidth_check(judged.profile, model, bandwidth_mb, wd, json_)
        extra.append(link)
    report = build_report(snap, judged, extra_checks=extra, workdir=target,
                          state=workdir_state(wd) if snapshot is None else None)
    report.bandwidth = measured
    source = str(snapshot) if snapshot else "this machine"
    doc = {**report.to_doc(), **choice_fields(target, choice)}
    emit(doc, json_, lambda _doc: _render(report, source=source, how=choice.how))
    if snapshot is None and not json_:
        _point_at_drift(wd)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _point_at_drift(wd: Workdir) -> None:
    """A workdir whose done steps no longer hold (a stopped server, a reinstalled vLLM): say so, and where to look."""
    from dsv4setup.status_check import drifted_steps

    drifted = drifted_steps(wd)
    if drifted:
        err.print(f"[bold yellow]the workdir {wd.root} has drifted[/]: {', '.join(drifted)} recorded done but no "
                  f"longer holding; see `dsv4setup status --workdir {wd.root}`", highlight=False)


def _cluster_checks(profile: Profile | None, snap: dict[str, Any], measured: bool) -> list[Finding]:
    """A multi-node profile's rules (topology.cluster_*): this machine's interfaces when judging it."""
    if profile is None or profile.multinode is None:
        return []
    from dsv4setup.cluster.nodes import default_route_interfaces, local_addresses, local_networks
    from dsv4setup.cluster.rules import Networks, doctor_findings
    from dsv4setup.hardware.facts import visible_gpus

    networks = Networks(local_networks(), default_route_interfaces()) if measured else None
    return doctor_findings(profile, local_addresses() if measured else None, len(visible_gpus(snap)), networks)


def _model_checks(model: str | None, quiet: bool) -> list[Finding]:
    """The remote checkpoint lint as `model.*` checks (hub failures come back as one failed check)."""
    if not model:
        return []
    from dsv4setup.checkpoint.service import remote_lint_checks

    repo, _, revision = model.partition("@")
    if repo.count("/") != 1:
        raise UsageError(f"--model {model}: expected ORG/NAME or ORG/NAME@REVISION")
    if quiet:
        return remote_lint_checks(repo, revision or "main", area="model")
    with err.status(f"reading {repo} metadata from the hub"):
        return remote_lint_checks(repo, revision or "main", area="model")


def _bandwidth_check(profile: Profile | None, model: str | None, megabytes: int | None, wd: Workdir,
                     quiet: bool) -> tuple[Finding, dict[str, object] | None]:
    """`host.bandwidth`: the measured rate (kept in the workdir), a hub failure as a failed check, or a skip
    when there is no repo to measure; and the measurement for the document."""
    from dsv4setup.core.finding import skipped
    from dsv4setup.core.secrets import hf_token
    from dsv4setup.download import bandwidth
    from dsv4setup.hub.access import HubError
    from dsv4setup.profiles.model import ModelSpec

    spec = profile.model if profile is not None else ModelSpec()
    repo, revision = (None, None) if spec.local_path or spec.generate else (spec.repo, spec.revision)
    if model:
        repo, _, rev = model.partition("@")
        revision = rev or "main"
    if not repo:
        name = profile.name if profile is not None else "no profile"
        return skipped(bandwidth.FINDING_ID, f"{name} downloads nothing from a hub: nothing to measure "
                                             "(pass --model ORG/NAME to measure a repo)"), None
    size = (megabytes or bandwidth.DEFAULT_PROBE_BYTES // 1_000_000) * 1_000_000
    try:
        if quiet:
            result = bandwidth.measure(repo, revision or "main", spec.allow_patterns, hf_token(), size)
        else:
            with err.status(f"timing up to {size // 1_000_000} MB of {repo}'s largest file"):
                result = bandwidth.measure(repo, revision or "main", spec.allow_patterns, hf_token(), size)
    except HubError as exc:
        return bandwidth.finding(exc), None
    path = bandwidth.save(wd.ensure().root, result)
    if not quiet:
        err.print(f"measured rate kept in {path} (`dsv4setup plan` uses it)", highlight=False)
    return bandwidth.finding(result), result.to_dict()


def _save(path: Path, snap: dict[str, object], quiet: bool) -> None:
    from dsv4setup.preflight.snapshot import save_snapshot

    try:
        save_snapshot(path, snap)
    except OSError as exc:
        raise UsageError(f"cannot write the snapshot to {path}: {exc.strerror or exc}",
                         fix="choose a writable path for --save-snapshot") from None
    if not quiet:
        err.print(f"snapshot written to {path}", highlight=False)


def _checks_table(report: DoctorReport, source: str, how: str) -> Table:
    from rich.table import Table

    from dsv4setup.preflight.report import ordered_for_display

    host = report.snapshot.get("host") or {}
    name = report.profile.name if report.profile else "-"
    table = Table(title=f"doctor: {host.get('hostname', '?')} ({source}), profile {name} ({how})",
                  title_justify="left")
    with_fix = any(r.fix for r in report.checks)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result", ratio=3)
    if with_fix:
        table.add_column("fix", ratio=2)
    for i, (_area, results) in enumerate(ordered_for_display(report.checks)):
        if i:
            table.add_section()
        for row in _rows(results):
            table.add_row(*(row if with_fix else row[:3]))
    return table


def _rows(results: list[Finding]) -> list[tuple[str, str, str, str]]:
    """One row per check; skipped checks of an area that share a reason share one dim row."""
    from rich.markup import escape

    rows = []
    skipped: dict[str, list[str]] = {}
    for r in results:
        if r.status == "skip":
            skipped.setdefault(r.summary, []).append(r.id)
            continue
        mark, style = STYLE[r.status]
        rows.append((f"[{style}]{mark}[/]", f"[{style}]{r.id}[/]", escape(r.summary), escape(r.fix or "")))
    mark, style = STYLE["skip"]
    for summary, ids in skipped.items():
        rows.append((f"[{style}]{mark}[/]", f"[{style}]{escape(chr(10).join(ids))}[/]", f"[dim]{escape(summary)}[/]",
                     ""))
    return rows


def _render(report: DoctorReport, source: str, how: str) -> None:
    from rich.markup import escape

    from dsv4setup.profiles.model import DEMO_NOTICE

    out.print(_checks_table(report, source, how))
    rec = report.recommendation
    if rec is not None:
        kind = " [yellow](derived for this machine, not verified)[/]" if rec["derived"] else ""
        out.print(f"[bold]recommendation[/]: profile [bold]{escape(rec['profile'])}[/]{kind}, "
                  f"--tensor-parallel-size {rec['tensor_parallel_size']}, "
                  f"num_speculative_tokens {rec['num_speculative_tokens']}")
        for note in rec["notes"]:
            out.print(f"  [yellow]note:[/] {escape(note)}", highlight=False)
        out.print("  serve args: " + escape(" ".join(rec["serve_args"])), highlight=False)
        out.print("  env: " + escape(" ".join(f"{k}={v}" for k, v in rec["env"].items())), highlight=False)
    for m in report.matches[:4]:
        if m.matched:
            out.print(f"  [green]matches[/] {escape(m.name)}: [dim]{escape('; '.join(m.reasons))}[/]")
        else:
            misses = "; ".join(r.removeprefix("no: ") for r in m.reasons if r.startswith("no: "))
            out.print(f"  [dim]not {escape(m.name)}: {escape(misses)}[/]")
    failures, warnings = report.failures, report.warnings
    if report.demo:
        err.print(f"[bold yellow]demo:[/] {escape(DEMO_NOTICE)}", highlight=False)
    if failures:
        err.print(f"[bold red]{len(failures)} check(s) failed[/], {len(warnings)} warning(s): fix the failures "
                  f"above, then run `dsv4setup doctor` again", highlight=False)
    else:
        nxt = f"dsv4setup up --profile {rec['profile']}" if rec else "dsv4setup up"
        multi = report.profile.multinode if report.profile is not None else None
        if multi is not None:
            nxt += f" --node NAME, on every node (NAME: {', '.join(n.name for n in multi.nodes)})"
        err.print(f"[bold green]no check failed[/] ({len(warnings)} warning(s)); next: [bold]{escape(nxt)}[/]",
                  highlight=False)
