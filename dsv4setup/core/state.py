"""The state file: what each step did, when, with which inputs, and how it ended."""

from __future__ import annotations

import json
import shlex
import threading
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import psutil
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from dsv4setup.core.errors import StateError
from dsv4setup.core.fsutil import atomic_write_json
from dsv4setup.core.generations import UpgradeJournal
from dsv4setup.core.outputs import StepOutputs

STATE_SCHEMA = "dsv4setup.state/2"
STATE_SCHEMA_V1 = "dsv4setup.state/1"  # the first release: step errors carry `hint` (read, upgraded on save)

OutputsT = TypeVar("OutputsT", bound=StepOutputs)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class StepErrorInfo(BaseModel):
    message: str
    fix: str | None = None
    log: str | None = None
    known_failure: str | None = None
    command: list[str] | None = None  # the argv that applies the fix, when one does (run it, then `up`)


class StepProgress(BaseModel):
    """A running step's live progress, written (throttled) by the engine so other processes can read it."""

    phase: str = "starting"
    updated_at: str = Field(default_factory=now_iso)
    expected_s: int | None = None  # the step's usual duration on this profile's hardware class
    bytes_done: int | None = None
    bytes_total: int | None = None
    rate_bps: float | None = None


class StepRecord(BaseModel):
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    pid: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    fingerprint: str | None = None
    fingerprint_inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: StepErrorInfo | None = None
    progress: StepProgress | None = None
    run_s: float | None = None  # wall seconds of the last run (done or failed); null before this field existed
    verify_s: float | None = None  # seconds the last check of its postcondition took (inputs + is_done)
    verified_at: str | None = None  # when that check ran (each `up` that reaches the step checks it)

    def is_interrupted(self) -> bool:
        """A step left 'running' by a process that no longer exists."""
        return self.status == StepStatus.RUNNING and not _pid_alive(self.pid)


class State(BaseModel):
    """The whole state file in memory. One `up` shares it between the steps it runs at the same time:
    every change to it and every save happens under `lock`, so a save never dumps a half-made change
    and two steps that finish together both reach the file (the later save carries both)."""

    schema_: str = Field(default=STATE_SCHEMA, alias="schema")
    created_at: str = Field(default_factory=now_iso)
    updated_at: str = Field(default_factory=now_iso)
    profile: str | None = None
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    upgrade: UpgradeJournal | None = None  # the last upgrade or rollback (absent before generations existed)

    model_config = {"populate_by_name": True}
    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)

    @property
    def lock(self) -> threading.RLock:
        """Held for every read-modify-write of this state and every save of it (re-entrant)."""
        return self._lock

    def step(self, name: str) -> StepRecord:
        return self.steps.setdefault(name, StepRecord())

    def to_doc(self) -> dict[str, Any]:
        """The file's document; `upgrade` only once an upgrade ran (a state without one reads as before)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"upgrade"} if self.upgrade is None else None)

    def outputs(self, model: type[OutputsT]) -> OutputsT | None:
        """The outputs `model.step` recorded when it last finished (None: not run, or not applicable)."""
        record = self.steps.get(model.step)
        if record is None or record.status != StepStatus.DONE:
            return None
        try:
            return model.model_validate(record.outputs)
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"])
            raise StateError(f"the state file's outputs of step {model.step} are not what this dsv4setup reads: "
                             f"{exc.errors()[0]['msg']} at {where}", fix=f"run the {model.step} step again",
                             command=f"dsv4setup up --redo {model.step}") from None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _corrupt(message: str, path: Path, step: str | None = None) -> StateError:
    """The error for a damaged state file, with the command that recovers: reset that step, or all."""
    target = ["--step", step] if step else ["--all"]
    fix = (f"run the command: `dsv4setup reset --step {step}` forgets only that step's record"
           if step else "run the command: `dsv4setup reset --all` moves the file aside (kept as a backup)")
    return StateError(message, fix=f"{fix}; never edit {path} by hand",
                      command=shlex.join(["dsv4setup", "reset", "--workdir", str(path.parent), *target]))


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(f"state file {path} is corrupt: {exc}", path) from None
    if isinstance(doc, dict) and doc.get("schema") == STATE_SCHEMA_V1:
        doc = _upgrade_v1(doc)
    if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise _corrupt(f"state file {path} has schema {found!r}, this dsv4setup reads {STATE_SCHEMA!r}", path)
    return doc


def _upgrade_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """A first-release state (`error.fix` in each step record) as this release's (`error.fix`)."""
    steps = doc.get("steps")
    if isinstance(steps, dict):
        for record in steps.values():
            error = record.get("error") if isinstance(record, dict) else None
            if isinstance(error, dict) and "hint" in error:
                error["fix"] = error.pop("hint")
    return {**doc, "schema": STATE_SCHEMA}


def _validate(path: Path, doc: dict[str, Any]) -> State:
    try:
        return State.model_validate(doc)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        where = ".".join(str(p) for p in loc)
        step = str(loc[1]) if len(loc) > 1 and loc[0] == "steps" else None
        raise _corrupt(f"state file {path} is invalid at {where}: {exc.errors()[0]['msg']}", path, step) from None


def load_state(path: Path) -> State:
    """Read the state file; a missing file is a fresh state, a bad one is a StateError (never discarded)."""
    if not path.exists():
        return State()
    return _validate(path, _read_doc(path))


def reset_steps(path: Path, names: list[str]) -> State:
    """Forget these steps' records (they run again). Works on a state whose only damage is in them."""
    if not path.exists():
        return State()
    doc = _read_doc(path)
    steps = doc.get("steps")
    if isinstance(steps, dict):
        for name in names:
            steps.pop(name, None)
    state = _validate(path, doc)
    save_state(path, state)
    return state


def save_state(path: Path, state: State) -> None:
    """Write the whole state atomically, under its lock (a concurrent step's change is never half-saved)."""
    with state.lock:
        state.updated_at = now_iso()
        atomic_write_json(path, state.to_doc())


def backup_state(path: Path) -> Path | None:
    """Move the state file aside (reset --all): nothing is ever silently discarded."""
    if not path.exists():
        return None
    backup = path.with_name(f"{path.name}.bak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}")
    path.rename(backup)
    return backup
