"""File identity against the hub: LFS sha256, git blob sha1, size; and the download manifest.

The manifest (beside the checkpoint directory) records what the hub announced for the pinned
commit and what was verified on disk, so the cheap postcondition (sizes, mtimes) and the full
re-hash of `download --verify` both work without asking the hub again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, Field, ValidationError

from dsv4setup.core.fsutil import atomic_write_json
from dsv4setup.core.state import now_iso

MANIFEST_SCHEMA: Final = "dsv4setup.download-manifest/1"
HASH_CHUNK = 8 * 1024 * 1024


class RemoteFile(BaseModel):
    """One file of the repo at the pinned commit, as the hub lists it."""

    path: str
    size: int
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git oid (of the content for regular files)

    @property
    def key(self) -> str:
        """A name for the partial download that changes when the content does."""
        return self.sha256 or self.blob_id or hashlib.sha256(f"{self.path}:{self.size}".encode()).hexdigest()


class FileRecord(BaseModel):
    size: int
    mtime_ns: int
    verified: Literal["sha256", "git-sha1", "size"]


class Manifest(BaseModel):
    schema_: Literal["dsv4setup.download-manifest/1"] = Field(default=MANIFEST_SCHEMA, alias="schema")
    repo: str
    revision: str  # as requested (branch, tag or sha)
    commit: str  # what it resolved to
    mode: Literal["workdir", "hf-cache"]
    root: str  # the directory that holds the files (the HF cache snapshot in hf-cache mode)
    allow_patterns: list[str]
    expected: dict[str, RemoteFile]
    verified: dict[str, FileRecord] = Field(default_factory=dict)
    complete: bool = False
    completed_at: str | None = None

    model_config = {"populate_by_name": True}

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.expected.values())


def manifest_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.download.json"


def read_manifest(dest: Path) -> Manifest | None:
    path = manifest_path(dest)
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError, ValueError):
        return None


def write_manifest(dest: Path, manifest: Manifest) -> None:
    atomic_write_json(manifest_path(dest), manifest.model_dump(mode="json", by_alias=True))


Stop = Callable[[], None]  # called between chunks; raises to abandon a long hash (Ctrl-C)


def git_blob_sha1(path: Path, stop: Stop | None = None) -> str:
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    _feed(digest, path, stop)
    return digest.hexdigest()


def sha256_file(path: Path, stop: Stop | None = None) -> str:
    digest = hashlib.sha256()
    _feed(digest, path, stop)
    return digest.hexdigest()


def _feed(digest: hashlib._Hash, path: Path, stop: Stop | None) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            if stop is not None:
                stop()
            digest.update(chunk)


def verify_content(path: Path, expected: RemoteFile, stop: Stop | None = None) -> tuple[str | None, FileRecord | None]:
    """(problem, record): hash the file as the hub identifies it. problem None means it matches."""
    if not path.is_file():
        return f"{expected.path}: missing", None
    stat = path.stat()
    if stat.st_size != expected.size:
        return f"{expected.path}: {stat.st_size} bytes, the hub says {expected.size}", None
    if expected.sha256:
        actual, how = sha256_file(path, stop), "sha256"
        wanted = expected.sha256
    elif expected.blob_id:
        actual, how = git_blob_sha1(path, stop), "git-sha1"
        wanted = expected.blob_id
    else:
        return None, FileRecord(size=stat.st_size, mtime_ns=stat.st_mtime_ns, verified="size")
    if actual != wanted:
        return f"{expected.path}: {how} {actual[:12]}… does not match the hub's {wanted[:12]}…", None
    return None, FileRecord(size=stat.st_size, mtime_ns=stat.st_mtime_ns, verified=how)  # type: ignore[arg-type]


def cheap_problems(manifest: Manifest) -> list[str]:
    """What changed since verification, by size and mtime only (no hashing): the postcondition."""
    root = Path(manifest.root)
    problems: list[str] = []
    for rel, expected in manifest.expected.items():
        path = root / rel
        record = manifest.verified.get(rel)
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != expected.size:
            problems.append(f"{rel} has {path.stat().st_size} bytes, expected {expected.size}")
        elif record is None:
            problems.append(f"{rel} was never verified")
        elif path.stat().st_mtime_ns != record.mtime_ns:
            problems.append(f"{rel} was modified after verification")
    return problems


def mark_complete(manifest: Manifest) -> None:
    manifest.complete = True
    manifest.completed_at = now_iso()
