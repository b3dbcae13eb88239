"""The status document: a pure view of the state file.

Honest by construction: a step recorded done that *needs* a step that failed (or was
interrupted), directly or through the steps between, is shown `stale`, since the failed step
runs again before it and `up` re-verifies it; a done step of the other branch (the download
beside a failed vLLM install) stays `done`. Without the runbook's `needs` every step needs
all before it. Every running step (both branches of one `up`) carries its live progress
(phase, bytes, rate, elapsed and expected seconds), and `running` names them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dsv4setup.core.state import State, StepRecord, StepStatus

STATUS_SCHEMA = "dsv4setup.status/6"  # /3: each step's `timings`; /4: `cluster` (runbook.status_document);
# /5: `verification`, `server`, each step's `drift` and the status `drifted` (status_check.py);
# /6: `stale` follows the steps' `needs` (steps run concurrently), `running` names every running step
BROKEN = ("failed", "interrupted")


def _elapsed_s(started_at: str | None, until: str | None = None) -> float | None:
    if not started_at:
        return None
    end = datetime.fromisoformat(until) if until else datetime.now(UTC)
    return round((end - datetime.fromisoformat(started_at)).total_seconds(), 1)


def timings(record: StepRecord | None) -> dict[str, Any]:
    """What the step cost: its last run (a state written before run_s was kept: from its timestamps,
    to the second) and the last check of its postcondition, which each `up` pays for a done step."""
    if record is None:
        return {"run_s": None, "verify_s": None, "verified_at": None}
    run_s = record.run_s
    if run_s is None and record.finished_at:
        run_s = _elapsed_s(record.started_at, record.finished_at)
    return {"run_s": run_s, "verify_s": record.verify_s, "verified_at": record.verified_at}


def _progress(record: StepRecord, status: str) -> dict[str, Any] | None:
    if status != "running" or record.progress is None:
        return None
    return {**record.progress.model_dump(), "elapsed_s": _elapsed_s(record.started_at)}


def step_view(name: str, state: State, after_broken: bool = False) -> dict[str, Any]:
    record = state.steps.get(name)
    if record is None:
        return {"step": name, "status": StepStatus.PENDING.value, "attempts": 0, "started_at": None,
                "finished_at": None, "error": None, "outputs": {}, "progress": None}
    status = "interrupted" if record.is_interrupted() else record.status.value
    if after_broken and status == StepStatus.DONE.value:
        status = "stale"
    return {"step": name, "status": status, "attempts": record.attempts, "started_at": record.started_at,
            "finished_at": record.finished_at,
            "error": record.error.model_dump() if record.error else None, "outputs": record.outputs,
            "progress": _progress(record, status)}


def profile_kind(state: State) -> dict[str, Any]:
    """derived / verified / demo of the profile, as the preflight step recorded it (null before it ran)."""
    record = state.steps.get("preflight")
    rec = (record.outputs.get("recommendation") if record is not None else None) or {}
    return {key: rec.get(key) for key in ("derived", "verified", "demo")}


def step_rows(state: State, names: list[str],
              needs: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """Each step's view, in runbook order, then any other step the state records.

    `needs`: each step's needs (a step missing from it, or no map at all: it needs every step before
    it). A step is tainted when it is broken or needs a tainted step; a done step that needs one is stale.
    """
    extra = [n for n in state.steps if n not in names]
    rows: list[dict[str, Any]] = []
    tainted: set[str] = set()
    for name in [*names, *extra]:
        earlier = [r["step"] for r in rows]
        wants = needs[name] if needs is not None and name in needs else earlier
        row = step_view(name, state, after_broken=any(n in tainted for n in wants))
        if row["status"] in BROKEN or any(n in tainted for n in wants):
            tainted.add(name)
        rows.append(row)
    return rows


def status_doc(state: State, names: list[str], needs: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    rows = [{**row, "timings": timings(state.steps.get(row["step"]))} for row in step_rows(state, names, needs)]
    return {"schema": STATUS_SCHEMA, "profile": state.profile, **profile_kind(state), "updated_at": state.updated_at,
            "running": [row["step"] for row in rows if row["status"] == StepStatus.RUNNING.value], "steps": rows}
