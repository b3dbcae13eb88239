"""The status document: a pure view of the state file."""

from __future__ import annotations

from typing import Any

from dsv4setup.core.state import State, StepStatus

STATUS_SCHEMA = "dsv4setup.status/2"


def step_view(name: str, state: State) -> dict[str, Any]:
    record = state.steps.get(name)
    if record is None:
        return {"step": name, "status": StepStatus.PENDING.value, "attempts": 0, "started_at": None,
                "finished_at": None, "error": None, "outputs": {}}
    status = "interrupted" if record.is_interrupted() else record.status.value
    return {"step": name, "status": status, "attempts": record.attempts, "started_at": record.started_at,
            "finished_at": record.finished_at,
            "error": record.error.model_dump() if record.error else None, "outputs": record.outputs}


def profile_kind(state: State) -> dict[str, Any]:
    """derived / verified / demo of the profile, as the preflight step recorded it (null before it ran)."""
    record = state.steps.get("preflight")
    rec = (record.outputs.get("recommendation") if record is not None else None) or {}
    return {key: rec.get(key) for key in ("derived", "verified", "demo")}


def status_doc(state: State, names: list[str]) -> dict[str, Any]:
    extra = [n for n in state.steps if n not in names]
    return {"schema": STATUS_SCHEMA, "profile": state.profile, **profile_kind(state), "updated_at": state.updated_at,
            "steps": [step_view(n, state) for n in [*names, *extra]]}
