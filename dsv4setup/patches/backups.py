"""Originals of patched files, kept beside the target in `.dsv4setup-backup/` with an index of
hashes. The index also tells, in a source tree without RECORD, what dsv4setup wrote there."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from dsv4setup.core.fsutil import contained, fsync_dir
from dsv4setup.patches.target import Target, sha256_bytes

BACKUP_INDEX = "index.json"


class BackedUp(Protocol):
    @property
    def rel(self) -> str: ...
    @property
    def patch_id(self) -> str: ...
    @property
    def before(self) -> bytes: ...
    @property
    def after(self) -> bytes: ...


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Temp file beside `path`, fsync, rename over it: a crash leaves the old or the new file."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".dsv4setup-tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class Backups:
    """Originals of patched files under <target>/.dsv4setup-backup, with an index of hashes."""

    def __init__(self, target: Target) -> None:
        self.root = target.backup_dir
        self.index_path = self.root / BACKUP_INDEX

    def file(self, rel: str) -> Path:
        """Where the original of `rel` is kept (refused when `rel` leaves the backup folder)."""
        return contained(self.root / "files", rel, f"the backup index {self.index_path}")

    def index(self) -> dict[str, dict[str, str]]:
        try:
            return dict(json.loads(self.index_path.read_text(encoding="utf-8")).get("files", {}))
        except (OSError, ValueError):
            return {}

    def _save(self, files: dict[str, dict[str, str]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"schema": "dsv4setup.patch-backup/1", "files": files}, indent=2) + "\n"
        write_bytes_atomically(self.index_path, payload.encode())

    def store(self, changes: Sequence[BackedUp]) -> None:
        files = self.index()
        for change in changes:
            dest = self.file(change.rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(dest, change.before)
            files[change.rel] = {"patch": change.patch_id, "original_sha256": sha256_bytes(change.before),
                                 "patched_sha256": sha256_bytes(change.after)}
        self._save(files)

    def original(self, rel: str, current: bytes) -> bytes | None:
        """The backed-up original of `rel`, if the backup belongs to exactly the current file."""
        entry = self.index().get(rel)
        if not entry or entry.get("patched_sha256") != sha256_bytes(current):
            return None
        try:
            data = self.file(rel).read_bytes()
        except OSError:
            return None
        return data if sha256_bytes(data) == entry.get("original_sha256") else None

    def forget(self, rels: Sequence[str]) -> None:
        files = self.index()
        for rel in rels:
            files.pop(rel, None)
            self.file(rel).unlink(missing_ok=True)
        self._save(files)
