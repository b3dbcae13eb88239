"""`status` that checks: each `done` step's record against the machine, plus one probe of the server.

A step recorded done is verified exactly as a no-op `up` verifies it before skipping it (the
engine's `verify_done`: its inputs' fingerprint, then its stat-speed postcondition `is_done`),
so `status` costs no more than that `up` (benchmarks/reup.py measures both). A step whose proof
no longer holds is shown `drifted`, with what moved (`drift`: the postcondition's own words, e.g.
the patch not in effect, the missing weight file, the dead server pid). The server gets one
bounded liveness probe (GET /health, with the API key when one exists for it).

Seam for multi-node heads: the cluster step's own `is_done` asks Ray who is alive (with
whatever credential the cluster package gives its Ray client); this module adds nothing there.
"""

from __future__ import annotations

from typing import Any

from dsv4setup.core.errors import DsvError
from dsv4setup.core.lock import current_holder
from dsv4setup.core.state import State, StepStatus, now_iso
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook

HEALTH_TIMEOUT_S = 2.0
DRIFTED = "drifted"


def verify_rows(workdir: Workdir, state: State, rows: list[dict[str, Any]],
                skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check every `done` row in place (status `drifted` + `drift` when its proof fails); what was checked.

    Returns the document's `verification`: `checked` (false: why not in `skipped_because`),
    `checked_at`, `drifted` (the step names). Nothing is written: the state file stays as it is.
    """
    for row in rows:
        row.setdefault("drift", None)
    holder = current_holder(workdir.lock_file)
    if holder is not None:
        return _unchecked(f"a run holds the workdir (pid {holder.get('pid')}, {holder.get('command')}): "
                          "its steps change under a check")
    if not state.profile:
        return _unchecked("nothing has run here yet")
    try:
        runbook = _runbook(workdir, state.profile)
    except DsvError as exc:
        return _unchecked(f"the profile does not resolve: {exc.message}")
    drifted: list[str] = []
    for row in rows:
        step = runbook.by_name.get(row["step"])
        if row["status"] != StepStatus.DONE.value or step is None or row["step"] in skip:
            continue
        moved: str | None
        try:
            post = runbook.verify_done(step, state)
            moved = None if post.ok else post.summary
        except DsvError as exc:
            moved = exc.message
        if moved is not None:
            row["status"], row["drift"] = DRIFTED, moved
            drifted.append(row["step"])
    return {"checked": True, "skipped_because": None, "checked_at": now_iso(), "drifted": drifted}


def record_only(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`status --no-verify` and `wait`: the record alone, nothing checked."""
    for row in rows:
        row.setdefault("drift", None)
    return _unchecked("the record alone (`dsv4setup status` without --no-verify checks it)")


def _unchecked(why: str) -> dict[str, Any]:
    return {"checked": False, "skipped_because": why, "checked_at": None, "drifted": []}


def _runbook(workdir: Workdir, profile: str) -> Runbook:
    from dsv4setup.runbook import RunbookRequest, build_runbook

    runbook, _ = build_runbook(RunbookRequest(workdir, profile))
    return runbook


def drifted_steps(workdir: Workdir) -> list[str]:
    """The done steps whose proof no longer holds (doctor's closing line); preflight left out: doctor is it."""
    from dsv4setup.core.state import load_state
    from dsv4setup.core.status import step_rows
    from dsv4setup.runbook import step_names, step_needs

    if not workdir.state_file.exists():
        return []
    try:
        state = load_state(workdir.state_file)
    except DsvError:
        return []
    rows = step_rows(state, step_names(), step_needs())
    return list(verify_rows(workdir, state, rows, skip=("preflight",))["drifted"])


def server_liveness(workdir: Workdir) -> dict[str, Any] | None:
    """One bounded probe of this workdir's server: its pid is ours, /health answers (key sent when one exists).

    None when no server is recorded here.
    """
    from dsv4setup.serve.apikey import api_key_file, client_api_key
    from dsv4setup.serve.process import is_ours, read_record
    from dsv4setup.serve.readiness import base_url, health_status, is_loopback

    record = read_record(workdir)
    if record is None:
        return None
    ours, detail = is_ours(record)
    auth = not is_loopback(record.host)
    key = client_api_key(workdir) if auth or api_key_file(workdir).exists() else None
    health = health_status(record.host, record.port, HEALTH_TIMEOUT_S, key) if ours else None
    if ours:
        detail += f", /health {health if health is not None else 'does not answer'}"
    return {"pid": record.pid, "alive": ours, "health": health, "healthy": ours and health == 200,
            "base_url": base_url(record.host, record.port), "auth": auth,
            "key_file": str(api_key_file(workdir)) if auth else None, "detail": detail}

