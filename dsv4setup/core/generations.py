"""Generations of the serving venv: several venvs side by side, one of them current.

A generation is `<workdir>/venvs/<vllm-version>-<short hash of the vllm step's inputs>/`. Venvs
cannot move (their scripts carry absolute shebangs, serve calls the venv's own `ray`), so a
plain `<workdir>/venv` made by an earlier release stays where it is as the generation named
`venv`. `<workdir>/venvs/current` names the current one (JSON, written atomically) and the one
before it; without that file the plain `venv/` is current. `Workdir.venv_dir` resolves every
use of the serving venv through `current_venv` here.

Each generation holds a marker, `dsv4setup-generation.json`, that dsv4setup wrote: what it
holds (version, patches), when it was made, the uid that made it, the step records that
built it (a switch restores them into the state) and its last smoke. `--keep N` removes only
directories proven ours: directly under `venvs/`, a generation's name, owned by this uid, with
our marker naming that directory; never the current one nor the one before it.

The upgrade journal (`State.upgrade`) says what an upgrade is doing, so a run killed at any
point is finished by the next `up` (`recovery`): back to the generation it came from.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from dsv4setup.core.fsutil import atomic_write_json

VENVS_DIR = "venvs"
LEGACY_NAME = "venv"  # the plain `<workdir>/venv` of releases before generations
POINTER_FILE = "current"
MARKER_FILE = "dsv4setup-generation.json"
POINTER_SCHEMA = "dsv4setup.generation-pointer/1"
MARKER_SCHEMA = "dsv4setup.generation/1"
_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_]*-[0-9a-f]{8}$")
_VERSION_UNSAFE = re.compile(r"[^0-9A-Za-z.+_]")


def venvs_dir(root: Path) -> Path:
    return root / VENVS_DIR


def pointer_file(root: Path) -> Path:
    return venvs_dir(root) / POINTER_FILE


def generation_name(version: str, inputs_fingerprint: str) -> str:
    """`<version>-<8 hex>`: the version made safe for a folder name, the hash of the vllm step's inputs."""
    safe = _VERSION_UNSAFE.sub("_", version).lstrip("._+") or "unknown"
    return f"{safe}-{inputs_fingerprint[:8]}"


def is_generation_name(name: str) -> bool:
    return name == LEGACY_NAME or bool(_NAME.match(name))


def generation_path(root: Path, name: str) -> Path:
    """Where a generation lives: the legacy `venv/` in the workdir, every other one under `venvs/`."""
    if not is_generation_name(name):
        raise ValueError(f"not a generation name: {name!r}")
    return root / LEGACY_NAME if name == LEGACY_NAME else venvs_dir(root) / name


@dataclass(frozen=True)
class Pointer:
    current: str
    previous: str | None = None


def read_pointer(root: Path) -> Pointer | None:
    """The current generation and the one before it; None: no pointer (the plain `venv/` is current)."""
    try:
        doc = json.loads(pointer_file(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not is_generation_name(str(doc.get("current", ""))):
        return None
    previous = doc.get("previous")
    return Pointer(str(doc["current"]), str(previous) if previous and is_generation_name(str(previous)) else None)


def write_pointer(root: Path, pointer: Pointer) -> None:
    """Make `pointer.current` current: one atomic rename, so a crash leaves the old or the new pointer."""
    atomic_write_json(pointer_file(root), {"schema": POINTER_SCHEMA, "current": pointer.current,
                                           "previous": pointer.previous})


def switch_pointer(root: Path, to: str) -> Pointer:
    """Make `to` current, the one current until now its previous (no change when `to` is already current)."""
    now = current_name(root)
    if now == to:
        return read_pointer(root) or Pointer(to)
    pointer = Pointer(to, now)
    write_pointer(root, pointer)
    return pointer


def current_name(root: Path) -> str | None:
    """The current generation's name: the pointer's, else the plain `venv/` when it exists, else None."""
    pointer = read_pointer(root)
    if pointer is not None:
        return pointer.current
    return LEGACY_NAME if (root / LEGACY_NAME).is_dir() else None


def current_venv(root: Path) -> Path:
    """THE serving venv of a workdir: the current generation (no pointer: the plain `venv/`)."""
    pointer = read_pointer(root)
    return generation_path(root, pointer.current) if pointer is not None else root / LEGACY_NAME


class SmokeMark(BaseModel):
    at: str
    ok: bool


class Marker(BaseModel):
    """What dsv4setup wrote into a generation it made (or adopted): proof it is ours, and what it holds."""

    schema_: str = Field(default=MARKER_SCHEMA, alias="schema")
    name: str
    vllm_version: str | None = None
    package: str | None = None
    inputs_fingerprint: str | None = None
    created_at: str
    uid: int
    complete: bool = False  # the vllm step (and, for an upgrade, the patches step) finished in it
    patches: dict[str, list[str]] = Field(default_factory=dict)  # applied / upstream
    last_smoke: SmokeMark | None = None
    records: dict[str, dict[str, Any]] = Field(default_factory=dict)  # step name -> its StepRecord document
    vllm_overrides: dict[str, Any] | None = None  # the workdir's `vllm:` overrides it was made from (rollback)

    model_config = {"populate_by_name": True}


def marker_file(venv: Path) -> Path:
    return venv / MARKER_FILE


def read_marker(venv: Path) -> Marker | None:
    try:
        return Marker.model_validate_json(marker_file(venv).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_marker(venv: Path, marker: Marker) -> None:
    """A new file beside the venv's own (never an edit of a file uv may have hard-linked from its cache)."""
    atomic_write_json(marker_file(venv), marker.model_dump(mode="json", by_alias=True))


def ownership_refusal(root: Path, path: Path, uid: int) -> str | None:
    """Why `path` is not provably a generation of ours (None: it is): the place, the name, the owner, our marker."""
    if path.parent != venvs_dir(root) and path != root / LEGACY_NAME:
        return "not directly in the workdir's venvs/"
    if path.is_symlink() or not path.is_dir():
        return "not a directory (a link or a file)"
    if not is_generation_name(path.name):
        return "not a generation's name"
    if path.stat().st_uid != uid:
        return f"owned by uid {path.stat().st_uid}, not {uid}"
    marker = read_marker(path)
    if marker is None or marker.name != path.name or marker.uid != uid:
        return f"no marker of ours ({MARKER_FILE}) naming it"
    return None


@dataclass(frozen=True)
class Generation:
    name: str
    path: Path
    marker: Marker | None
    current: bool
    previous: bool


def list_generations(root: Path) -> list[Generation]:
    """Every generation on disk, oldest first (by the marker's created_at, else the folder's mtime)."""
    pointer = read_pointer(root)
    current = pointer.current if pointer else current_name(root)
    previous = pointer.previous if pointer else None
    paths = [root / LEGACY_NAME] if (root / LEGACY_NAME / "bin").is_dir() else []
    if venvs_dir(root).is_dir():
        paths += sorted(p for p in venvs_dir(root).iterdir() if p.is_dir() and _NAME.match(p.name))
    found = [Generation(p.name, p, read_marker(p), p.name == current, p.name == previous) for p in paths]
    return sorted(found, key=lambda g: g.marker.created_at if g.marker else _mtime_iso(g.path))


def _mtime_iso(path: Path) -> str:
    from datetime import UTC, datetime

    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    except OSError:
        return ""


def to_remove(names_oldest_first: list[str], current: str | None, previous: str | None, keep: int) -> list[str]:
    """Which generations `--keep N` removes: the oldest beyond the newest `keep`, never current nor previous.

    Pure: ownership is judged separately (`ownership_refusal`) before anything is removed."""
    if keep < 0:
        raise ValueError("keep must be >= 0")
    protected = {current, previous}
    kept = 0
    remove = []
    for name in reversed(names_oldest_first):
        if name in protected:
            continue
        if kept < keep:
            kept += 1
        else:
            remove.append(name)
    return list(reversed(remove))


Phase = Literal["building", "built", "switching", "done", "failed", "interrupted"]


class UpgradeJournal(BaseModel):
    """What an upgrade (or rollback) is doing, kept in the state file across a kill -9."""

    kind: Literal["upgrade", "rollback"] = "upgrade"
    phase: Phase
    pid: int = Field(default_factory=os.getpid)
    started_at: str
    updated_at: str
    from_generation: str | None
    to_generation: str
    from_version: str | None
    to_version: str | None
    from_previous: str | None = None  # the pointer's previous before, put back when the switch is undone
    from_vllm: dict[str, Any] = Field(default_factory=dict)  # the workdir's `vllm:` overrides before, put back
    error: str | None = None
    log: str | None = None


def recovery(journal: UpgradeJournal | None, pid_alive: bool) -> Literal["none", "wait", "roll-back", "forget"]:
    """What the next `up` does with a journal it finds (pure).

    A finished journal (done, failed, interrupted) needs nothing. A live run's is not ours to touch.
    A dead run that was building left the old generation current and serving: only the journal is
    closed. A dead run that was switching may have left the pointer, the records or the server on either
    side: roll back to the generation it came from, which is known to have served.
    """
    if journal is None or journal.phase in ("done", "failed", "interrupted"):
        return "none"
    if pid_alive:
        return "wait"
    if journal.phase == "switching" and journal.from_generation is not None:
        return "roll-back"
    return "forget"
