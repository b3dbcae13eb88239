"""Small filesystem helpers: atomic writes, and paths from outside data kept under their root."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path, PurePosixPath

from dsv4setup.core.errors import DsvError
from dsv4setup.core.secrets import redact_json, register_secret

UNWRITABLE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class UnwritableError(DsvError):
    """The disk is full or the folder cannot be written: the previous file is left as it was."""


def unwritable(path: Path, exc: OSError) -> UnwritableError:
    """The error for a write that the filesystem refused (disk full, read-only, no permission)."""
    fix = ("free space on that disk" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else "make it writable (a read-only mount, or permissions)")
    return UnwritableError(f"cannot write {path}: {exc.strerror}; nothing was changed there",
                           fix=f"{fix}, or use --workdir on another disk; then run the same command again "
                                "(it resumes)")


class PathEscapeError(DsvError):
    """A path taken from outside data (a hub file list, a config, a manifest, a name) leaves its root."""


def contained(root: Path, relpath: str, what: str, error: type[DsvError] = PathEscapeError) -> Path:
    """`root / relpath`, refused unless it stays under root: no absolute path, no `..`, no folder that
    links out. The last component may be a link (an HF-cache snapshot links its files to blobs; a
    rename over it replaces the link, never writes through it).

    `what` says where the value came from, for the message (e.g. "the hub's file list of org/name").
    Nothing is created or written here: callers check before they write.
    """
    rel = PurePosixPath(relpath)
    bad = (not relpath or "\0" in relpath or rel.is_absolute() or ".." in rel.parts or relpath.startswith("~")
           or rel.name in ("", "."))
    path = root / relpath
    if not bad:
        bad = not path.parent.resolve().is_relative_to(root.resolve())
    if bad:
        raise error(f"{what} names {relpath!r}, which is not a path inside {root}; nothing was written there",
                    fix="a file name must stay under its folder (no leading /, no .., no link out): "
                         "fix or replace the source of the name")
    return path


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` so that a crash at any moment leaves either the old or the new file.

    Temp file in the same directory, fsync, rename over the target, fsync the directory. A full
    or read-only disk raises UnwritableError (the old file intact, the temp file removed).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in UNWRITABLE:
            raise unwritable(path, exc) from None
        raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in UNWRITABLE:
            raise unwritable(path, exc) from None
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make the renames into `directory` durable (a crash after a rename otherwise may undo it)."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk before a rename publishes it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, doc: object) -> None:
    """Atomic JSON write with every known secret redacted."""
    atomic_write_text(path, redact_json(doc, indent=2, sort_keys=False) + "\n")


def stat_key(path: str | Path) -> list[int] | None:
    """What a proof keyed on a file remembers of it (None: missing): size, mtime_ns, ctime_ns, inode.

    Every write or rename moves ctime, which no user can set back, so a file whose key is unchanged
    was not touched since the key was taken.
    """
    try:
        st = os.stat(path)  # a str saves building a Path where thousands of files are checked
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def write_secret_file(path: Path, value: str) -> None:
    """`value` as the one line of `path`, written atomically 0600 in a folder only its owner reads (0700),
    and registered for redaction."""
    register_secret(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    atomic_write_text(path, value + "\n", mode=0o600)
