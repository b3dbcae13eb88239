"""Assemble a Runbook for a workdir: the resolved profile plus the step list.

`DSV4SETUP_RUNBOOK=module:attr` swaps in another step list (a callable returning steps):
an extension point for site-specific runbooks, also used by the kill-and-resume tests.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv4setup.core.decision import Decision
from dsv4setup.core.errors import UsageError
from dsv4setup.core.lock import workdir_lock
from dsv4setup.core.state import backup_state, load_state, reset_steps
from dsv4setup.core.status import step_rows
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Step, UpResult
from dsv4setup.preflight.snapshot import take_snapshot
from dsv4setup.profiles.model import Profile
from dsv4setup.profiles.resolve import ResolvedProfile, resolve_profile

ENV_RUNBOOK = "DSV4SETUP_RUNBOOK"
UP_SCHEMA = "dsv4setup.up/3"  # /3: the steps' `stale` follows their `needs` (status/6)
RESET_SCHEMA = "dsv4setup.reset/1"
DOWNLOAD_SCHEMA = "dsv4setup.download/2"

# The runbook's steps, in order. Each step is the package of the same name; its `step` module
# holds the Step (`STEP`), imported only when the runbook is built.
STEP_ORDER: tuple[str, ...] = (
    "preflight", "toolkit", "vllm", "patches", "download", "checkpoint", "cluster", "serve", "smoke",
)
OPTIONAL_STEPS: tuple[str, ...] = ("bench",)


def load_step(name: str) -> Step:
    """Import `dsv4setup.<name>.step` and instantiate its STEP class (imports stay lazy)."""
    module = importlib.import_module(f"dsv4setup.{name}.step")
    step: Step = module.STEP()
    return step


def runbook_steps(with_bench: bool = False) -> list[Step]:
    names = STEP_ORDER + (OPTIONAL_STEPS if with_bench else ())
    return [load_step(n) for n in names]


@dataclass
class RunbookRequest:
    workdir: Workdir
    profile: str | None = None
    sets: list[str] = field(default_factory=list)
    with_bench: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def _custom_steps(spec: str) -> list[Step]:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr or "steps")
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"{ENV_RUNBOOK}={spec}: cannot load it ({exc})",
                         fix="use module:callable, with the module on PYTHONPATH") from None
    return list(factory())


def step_names(with_bench: bool = True) -> list[str]:
    """The runbook's step names, without resolving a profile (for `status`)."""
    spec = os.environ.get(ENV_RUNBOOK)
    if spec:
        return [s.name for s in _custom_steps(spec)]
    return list(STEP_ORDER + (OPTIONAL_STEPS if with_bench else ()))


def _graph_steps(with_bench: bool) -> list[Step]:
    spec = os.environ.get(ENV_RUNBOOK)
    return _custom_steps(spec) if spec else runbook_steps(with_bench=with_bench)


def step_needs(with_bench: bool = True) -> dict[str, tuple[str, ...]]:
    """Each step's `needs`, without resolving a profile (`status`'s stale rule follows them)."""
    return {s.name: tuple(s.needs) for s in _graph_steps(with_bench)}


def step_waits(with_bench: bool = True) -> dict[str, tuple[str, ...]]:
    """What each step waits for in one `up` (needs and `after`), without resolving a profile (`next`)."""
    return {s.name: (*s.needs, *s.after) for s in _graph_steps(with_bench)}


def build_runbook(request: RunbookRequest) -> tuple[Runbook, ResolvedProfile]:
    resolved = resolve_profile(request.workdir, request.profile, request.sets, probe=take_snapshot)
    spec = os.environ.get(ENV_RUNBOOK)
    steps = _custom_steps(spec) if spec else runbook_steps(with_bench=request.with_bench)
    return Runbook(steps, request.workdir, resolved.profile, request.options), resolved


def resume_command(workdir: Path, profile: str) -> list[str]:
    return ["dsv4setup", "up", "--workdir", str(workdir), "--profile", profile, "--yes"]


def dry_run_doc(profile: Profile, workdir: Workdir, decisions: list[Decision]) -> dict[str, Any]:
    """The `dsv4setup.up/3` document of `up --dry-run`: what each step would do, and why."""
    return {"schema": UP_SCHEMA, "ok": True, "dry_run": True, "profile": profile.name, **profile.marks(),
            "workdir": str(workdir.root), "steps": [d.to_dict() for d in decisions]}


def up_doc(runbook: Runbook, profile: Profile, result: UpResult, elapsed_s: float) -> dict[str, Any]:
    """The `dsv4setup.up/3` document of a finished `up`: each step's record, the decisions, the failure."""
    workdir = runbook.workdir
    return {"schema": UP_SCHEMA, "ok": result.ok, "dry_run": False, "profile": profile.name, **profile.marks(),
            "workdir": str(workdir.root),
            "steps": step_rows(load_state(workdir.state_file), runbook.names, runbook.needs),
            "decisions": [d.to_dict() for d in result.decisions], "failed_step": result.failed_step,
            "error": result.error.model_dump() if result.error else None, "log_tail": result.log_tail,
            "resume": None if result.ok else resume_command(workdir.root, profile.name),
            "elapsed_s": round(elapsed_s, 1)}


def download_doc(runbook: Runbook, profile: str, result: UpResult) -> dict[str, Any]:
    """The `dsv4setup.download/2` document of the download step run alone (`dsv4setup download`)."""
    workdir = runbook.workdir
    record = load_state(workdir.state_file).step("download")
    return {"schema": DOWNLOAD_SCHEMA, "ok": result.ok, "profile": profile, "workdir": str(workdir.root),
            "action": next((d.action for d in result.decisions if d.step == "download"), "run"),
            "outputs": record.outputs if result.ok else None,
            "error": result.error.model_dump() if result.error else None, "log": str(workdir.log_file("download"))}


def reset_workdir(workdir: Workdir, steps: list[str], everything: bool) -> dict[str, Any]:
    """Forget these steps' records, or move the whole state file aside; the `dsv4setup.reset/1` document."""
    with workdir_lock(workdir.lock_file, "reset"):
        if everything:
            backup = backup_state(workdir.state_file)
            return {"schema": RESET_SCHEMA, "ok": True, "backup": str(backup) if backup else None, "steps": "all"}
        reset_steps(workdir.state_file, steps)
        return {"schema": RESET_SCHEMA, "ok": True, "backup": None, "steps": steps}


def status_document(workdir: Workdir, live: bool = False, verify: bool = False) -> dict[str, Any]:
    """`dsv4setup status`: each step from the state file, the workdir, the systemd unit when one is installed,
    and on a multi-node profile every node (`live`: also ask this node's Ray cluster, bounded, who is alive now).
    `verify`: each done step's proof checked as a no-op `up` checks it, and one probe of the server
    (status_check.py); else the record alone."""
    from dsv4setup.cluster.view import cluster_status
    from dsv4setup.core.state import load_state
    from dsv4setup.core.status import status_doc
    from dsv4setup.service.systemd import status_summary
    from dsv4setup.status_check import record_only, server_liveness, verify_rows

    state = load_state(workdir.state_file)
    doc = status_doc(state, step_names(), step_needs())
    checked = verify_rows(workdir, state, doc["steps"]) if verify else record_only(doc["steps"])
    return {**doc, "workdir": str(workdir.root), "workdir_chosen_by": workdir.chosen_by,
            "verification": checked, "server": server_liveness(workdir) if verify else None,
            "service": status_summary(workdir), "cluster": cluster_status(workdir, state, live)}
