"""Apply and revert patches atomically: all or nothing, originals backed up, results verified.

Order of apply: check every patch (a conflict anywhere stops everything before any change),
stage every result in a temp dir (all hunks of all patches must fit), verify the staged
results (probe says fixed), back up the originals, replace the files one by one (atomic
rename each), verify the files on disk (sha256 and status). Any failure after the first
replacement restores every file already replaced, byte for byte.

A kill between two renames cannot run that restore: a journal (`<backup>/journal.json`, the
files being replaced) is written before the first rename and removed after the last check.
Whoever applies or reverts next finds it and first puts back the original of every journaled
file that holds our patched bytes (from the backups), so a set applied halfway is never left
as a `conflict`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from dsv4setup.core.errors import DsvError
from dsv4setup.core.fsutil import atomic_write_text, fsync_dir
from dsv4setup.patches import backups as backup_mod
from dsv4setup.patches.backups import Backups
from dsv4setup.patches.manifest import Manifest, Patch
from dsv4setup.patches.status import PatchReport, check_patch, check_patches, evaluate_probe
from dsv4setup.patches.status import reinstall_fix as reinstall_fix  # public here too: step.py imports it from apply
from dsv4setup.patches.target import Target, sha256_bytes

Log = Callable[[str], None]
JOURNAL = "journal.json"
JOURNAL_SCHEMA = "dsv4setup.patch-journal/1"


class PatchConflictError(DsvError):
    """A target file was changed by something other than our patch: nothing was touched."""


@dataclass(frozen=True)
class Change:
    rel: str
    patch_id: str
    before: bytes = field(repr=False)
    after: bytes = field(repr=False)


@dataclass(frozen=True)
class ActionResult:
    reports: list[PatchReport]  # statuses after the action
    changed: list[str]  # patch ids applied or reverted by this call


def _raise_conflicts(reports: Sequence[PatchReport], target: Target) -> None:
    conflicts = [r for r in reports if r.status == "conflict"]
    if conflicts:
        lines = "\n  ".join(f"{r.id}: {r.detail} ({', '.join(str(target.path(f)) for f in r.files)})"
                            for r in conflicts)
        raise PatchConflictError(f"conflict, nothing changed:\n  {lines}", fix=reinstall_fix(target))


def _drop_bytecode(path: Path) -> None:
    """Remove cached bytecode of a replaced module so nothing can serve the old code."""
    for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        pyc.unlink(missing_ok=True)


def _replace_all(target: Target, changes: Sequence[Change], *, forward: bool, log: Log) -> None:
    """Write every change; on any failure put back every file already written, then raise."""
    done: list[Change] = []
    try:
        for change in changes:
            path = target.path(change.rel)
            backup_mod.write_bytes_atomically(path, change.after if forward else change.before)
            _drop_bytecode(path)
            done.append(change)
            log(f"{'patched' if forward else 'restored'} {path}")
    except BaseException as exc:
        _rollback(target, done, forward=forward, log=log)
        if isinstance(exc, DsvError):
            raise
        raise DsvError(f"writing {target.path(changes[len(done)].rel)} failed ({type(exc).__name__}: {exc}); "
                       f"every file already written was restored", fix=reinstall_fix(target)) from exc


def _journal(target: Target) -> Path:
    return target.backup_dir / JOURNAL


def _replace_journaled(target: Target, changes: Sequence[Change], *, forward: bool, log: Log,
                       check: Callable[[], str | None]) -> str | None:
    """_replace_all under the journal; `check` verifies the result (a problem rolls everything back)."""
    atomic_write_text(_journal(target), json.dumps({"schema": JOURNAL_SCHEMA, "forward": forward,
                                                    "files": [c.rel for c in changes]}) + "\n")
    _replace_all(target, changes, forward=forward, log=log)
    problem = check()
    if problem is not None:
        _rollback(target, changes, forward=forward, log=log)
    _journal(target).unlink()
    fsync_dir(target.backup_dir)
    return problem


def recover_interrupted(target: Target, log: Log = lambda _m: None) -> list[str]:
    """Finish what a killed apply or revert left half-done (its journal): every journaled file that
    holds our patched bytes gets its backed-up original back. Returns the files restored."""
    path = _journal(target)
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DsvError(f"the patch journal {path} cannot be read ({exc})",
                       fix=f"reinstall vLLM to get pristine files, then remove {path}: " + reinstall_fix(target)) \
            from None
    backups = Backups(target)
    restored = []
    for rel in files:
        current = target.read(rel)
        original = backups.original(rel, current) if current is not None else None
        if original is not None:
            backup_mod.write_bytes_atomically(target.path(rel), original)
            _drop_bytecode(target.path(rel))
            restored.append(rel)
            log(f"restored {target.path(rel)}: an earlier run was stopped halfway through its patches")
    path.unlink()
    fsync_dir(target.backup_dir)
    return restored


def _rollback(target: Target, done: Sequence[Change], *, forward: bool, log: Log) -> None:
    for change in reversed(done):
        path = target.path(change.rel)
        backup_mod.write_bytes_atomically(path, change.before if forward else change.after)
        _drop_bytecode(path)
        log(f"rolled back {path}")


def _selected(manifest: Manifest, ids: Sequence[str] | None) -> list[Patch]:
    return [manifest.get(i) for i in ids] if ids else list(manifest.patches)


def _verify_on_disk(target: Target, changes: Sequence[Change], patches: Sequence[Patch], *,
                    forward: bool) -> str | None:
    """What is wrong with the files now on disk, or None when every file and status is as intended."""
    for change in changes:
        want = change.after if forward else change.before
        data = target.read(change.rel)
        if data is None or sha256_bytes(data) != sha256_bytes(want):
            return f"{target.path(change.rel)} does not hold the expected bytes after writing"
    for patch in patches:
        report = check_patch(patch, target)
        expected = ("applied",) if forward else ("applicable", "upstream")
        if report.status not in expected:
            return f"patch {patch.id} is {report.status} after the write ({report.detail})"
    return None


def apply_patches(manifest: Manifest, target: Target, ids: Sequence[str] | None = None, *,
                  log: Log = lambda _m: None) -> ActionResult:
    """Apply the given patches (default: every applicable one). Explicit ids must all be
    applicable, applied or upstream. All or nothing."""
    recover_interrupted(target, log)
    patches = _selected(manifest, ids)
    reports = check_patches(patches, target)
    _raise_conflicts(reports, target)
    if ids:
        blocked = [r for r in reports if r.status == "not-applicable"]
        if blocked:
            raise DsvError("cannot apply, nothing changed: " + "; ".join(f"{r.id}: {r.detail}" for r in blocked),
                           fix="drop these ids, or install a vLLM version the patch supports "
                                "(see `dsv4setup patches status`)")
    todo = [r for r in reports if r.status == "applicable"]
    changes: list[Change] = []
    for report in todo:
        staged = {rel: report.staged[rel] for rel in report.files}

        def staged_or_disk(rel: str, staged: dict[str, bytes] = staged) -> bytes | None:
            return staged.get(rel, target.read(rel))

        probe = evaluate_probe(report.patch.spec.probe, staged_or_disk)
        if probe.state != "fixed":
            raise DsvError(f"patch {report.id}: the patched result does not pass its own probe; nothing changed",
                           fix="a bug in the shipped patch data; please report it")
        for rel in report.files:
            before = target.read(rel)
            assert before is not None
            changes.append(Change(rel, report.id, before, staged[rel]))
    if changes:
        Backups(target).store(changes)
        log(f"backed up {len(changes)} original file(s) under {target.backup_dir}")
        problem = _replace_journaled(target, changes, forward=True, log=log, check=partial(
            _verify_on_disk, target, changes, [r.patch for r in todo], forward=True))
        if problem is not None:
            raise DsvError(f"verification failed after patching, every file restored: {problem}",
                           fix=reinstall_fix(target))
    return ActionResult(check_patches(patches, target), [r.id for r in todo])


def revert_patches(manifest: Manifest, target: Target, ids: Sequence[str] | None = None, *,
                   log: Log = lambda _m: None) -> ActionResult:
    """Restore the byte-identical originals of the given applied patches (default: all applied)."""
    recover_interrupted(target, log)
    patches = _selected(manifest, ids)
    reports = check_patches(patches, target)
    _raise_conflicts(reports, target)
    todo = [r for r in reports if r.status == "applied"]
    backups = Backups(target)
    changes: list[Change] = []
    for report in todo:
        for rel in report.files:
            current = target.read(rel)
            assert current is not None
            original = backups.original(rel, current) or report.originals[rel]
            pristine = target.pristine_sha256(rel)
            if pristine is not None and sha256_bytes(original) != pristine:
                original = report.originals[rel]  # the backup is stale; the reversed diff matches RECORD
            changes.append(Change(rel, report.id, original, current))
    if changes:
        problem = _replace_journaled(target, changes, forward=False, log=log, check=partial(
            _verify_on_disk, target, changes, [r.patch for r in todo], forward=False))
        if problem is not None:
            raise DsvError(f"verification failed after reverting, patched files put back: {problem}",
                           fix=reinstall_fix(target))
        backups.forget([c.rel for c in changes])
    return ActionResult(check_patches(patches, target), [r.id for r in todo])
