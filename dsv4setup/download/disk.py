"""Free-space preflight: refuse a download that cannot fit before its first byte."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dsv4setup.core.errors import DsvError

MARGIN_FRACTION = 0.02  # filesystems misbehave when full; keep 2 % of the download free ...
MARGIN_MIN_BYTES = 1 << 30  # ... and at least 1 GiB

FreeSpace = Callable[[Path], int]


class DiskSpaceError(DsvError):
    """The download does not fit on the target filesystem."""


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_free_bytes(path: Path) -> int:
    """Bytes available to this user on the filesystem that holds `path` (or would hold it)."""
    return shutil.disk_usage(existing_ancestor(path)).free


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class DiskCheck:
    path: Path
    need: int  # bytes still to write
    margin: int
    free: int

    @property
    def ok(self) -> bool:
        return self.free >= self.need + self.margin

    def describe(self) -> str:
        return (f"{human(self.need)} to download + {human(self.margin)} margin at {self.path}, "
                f"{human(self.free)} free")


def check_disk(need: int, path: Path, free_space: FreeSpace) -> DiskCheck:
    """Compare what is left to download with the free space; raise DiskSpaceError when it does not fit."""
    margin = max(MARGIN_MIN_BYTES, int(need * MARGIN_FRACTION)) if need else 0
    check = DiskCheck(existing_ancestor(path), need, margin, free_space(path))
    if not check.ok:
        short = check.need + check.margin - check.free
        raise DiskSpaceError(
            f"not enough disk space: {check.describe()} (short by {human(short)}); nothing was downloaded",
            fix=f"free {human(short)} on that filesystem, or put the workdir on a larger disk "
                 "(--workdir DIR or DSV4SETUP_WORKDIR), or use the HF cache on another disk "
                 "(DSV4SETUP_HF_CACHE=1 with HF_HUB_CACHE=DIR)")
    return check
