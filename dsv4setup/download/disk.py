"""Free-space preflight: refuse a download that cannot fit before its first byte.

The download runs beside the installs (issue #28), so what it needs is judged together with what they
still write (the serving venv, a toolkit, the installer's cache): everything on disk at once, one
number per filesystem with its parts listed (`judge_disk`, pure; `check_disk` measures and calls it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dsv4setup.core.errors import DsvError

MARGIN_FRACTION = 0.02  # filesystems misbehave when full; keep 2 % of what is written free ...
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
class DiskPart:
    """Bytes one thing still writes (`checkpoint`, `serving venv`, `installer cache`, ...) and the filesystem they
    land on (`filesystem`: a key that is equal for paths on the same filesystem, e.g. its device number)."""

    name: str
    bytes: int
    filesystem: str


@dataclass(frozen=True)
class DiskCheck:
    """Everything that will be on one filesystem at once: one number, its parts listed."""

    path: Path  # where it is (the first part's place, for the message)
    parts: tuple[DiskPart, ...]
    free: int

    @property
    def need(self) -> int:
        return sum(p.bytes for p in self.parts)

    @property
    def ok(self) -> bool:
        return self.free >= self.need

    @property
    def margin(self) -> int:
        return sum(p.bytes for p in self.parts if p.name == "margin")

    def describe(self) -> str:
        listed = " + ".join(f"{p.name} {human(p.bytes)}" for p in self.parts if p.bytes)
        return f"{human(self.need)} at {self.path} ({listed or 'nothing to write'}), {human(self.free)} free"


def margin_for(need: int) -> int:
    return max(MARGIN_MIN_BYTES, int(need * MARGIN_FRACTION)) if need else 0


def judge_disk(parts: Sequence[DiskPart], free: Mapping[str, int], places: Mapping[str, Path]) -> list[DiskCheck]:
    """One verdict per filesystem: the sum of the parts that land on it against its free bytes (pure).

    `free` and `places` are keyed by the parts' `filesystem`; the worst (shortest) filesystem comes first.
    """
    grouped: dict[str, list[DiskPart]] = {}
    for part in parts:
        grouped.setdefault(part.filesystem, []).append(part)
    checks = [DiskCheck(places[fs], tuple(group), free[fs]) for fs, group in grouped.items()]
    return sorted(checks, key=lambda c: c.free - c.need)


def filesystem_key(path: Path) -> str:
    """Equal for two paths on one filesystem (the device of the nearest existing ancestor)."""
    return str(os.stat(existing_ancestor(path)).st_dev)


def installer_cache_dir(installer: str, env: Mapping[str, str] = os.environ) -> Path:
    """Where uv (UV_CACHE_DIR) or pip (PIP_CACHE_DIR) keep the wheels they fetch; default ~/.cache/<name>."""
    name = "pip" if installer == "pip" else "uv"
    explicit = env.get("PIP_CACHE_DIR" if name == "pip" else "UV_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / name


def check_disk(need: int, path: Path, free_space: FreeSpace, also: Sequence[tuple[str, int, Path]] = ()) -> DiskCheck:
    """What is left to download, plus `also` (name, bytes, where: what other steps write meanwhile), against
    the free space of each filesystem they land on; raise DiskSpaceError when one does not hold its share.
    Returns the verdict of the checkpoint's filesystem."""
    here = filesystem_key(path)
    parts = [DiskPart("checkpoint", need, here)]
    places = {here: path}
    for name, size, where in also if need else ():  # nothing to fetch: the download takes no room from anyone
        fs = filesystem_key(where)
        places.setdefault(fs, where)
        parts.append(DiskPart(name, size, fs))
    parts.append(DiskPart("margin", margin_for(sum(p.bytes for p in parts if p.filesystem == here)), here))
    checks = judge_disk(parts, {fs: free_space(place) for fs, place in places.items()},
                        {fs: existing_ancestor(place) for fs, place in places.items()})
    short = checks[0]
    if not short.ok:
        gap = short.need - short.free
        raise DiskSpaceError(
            f"not enough disk space: {short.describe()} (short by {human(gap)}); nothing was downloaded",
            fix=f"free {human(gap)} on that filesystem, or put the workdir on a larger disk "
                 "(--workdir DIR or DSV4SETUP_WORKDIR), or use the HF cache on another disk "
                 "(DSV4SETUP_HF_CACHE=1 with HF_HUB_CACHE=DIR)")
    return next(c for c in checks if any(p.name == "checkpoint" for p in c.parts))
