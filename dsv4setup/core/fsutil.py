"""Small filesystem helpers: atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from dsv4setup.core.secrets import redact, redact_obj


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` so that a crash at any moment leaves either the old or the new file.

    Temp file in the same directory, fsync, rename over the target, fsync the directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, doc: object) -> None:
    """Atomic JSON write with every known secret redacted."""
    atomic_write_text(path, redact(json.dumps(redact_obj(doc), indent=2, sort_keys=False)) + "\n")
