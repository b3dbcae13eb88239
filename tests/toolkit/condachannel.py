"""A local conda channel for tests: real conda package archives (.tar.bz2, the v1 format:
`info/index.json`, `info/paths.json`, `info/files` beside the payload) indexed by py-rattler's
own indexer into `<subdir>/repodata.json`, the way a channel server is indexed.

Only the channel is a stand-in (local, built by the test); the archives follow the format
conda and rattler install from.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SUBDIR = "linux-64"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    files: Mapping[str, Path] = field(default_factory=dict)  # path in the prefix -> source file
    depends: tuple[str, ...] = ()
    build: str = "h0_0"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def write_package(subdir: Path, pkg: Package) -> Path:
    """`<subdir>/<name>-<version>-<build>.tar.bz2` holding `pkg.files` (modes kept)."""
    subdir.mkdir(parents=True, exist_ok=True)
    index = {"name": pkg.name, "version": pkg.version, "build": pkg.build, "build_number": 0,
             "depends": list(pkg.depends), "subdir": subdir.name, "arch": "x86_64", "platform": "linux",
             "license": "NVIDIA proprietary (repackaged pip wheel files, test channel)",
             "timestamp": int(time.time() * 1000)}
    paths = [{"_path": rel, "path_type": "hardlink", "sha256": _sha256(src), "size_in_bytes": src.stat().st_size}
             for rel, src in sorted(pkg.files.items())]
    archive = subdir / f"{pkg.name}-{pkg.version}-{pkg.build}.tar.bz2"
    with tarfile.open(archive, "w:bz2", compresslevel=1) as tar:
        for rel, src in sorted(pkg.files.items()):
            tar.add(src, arcname=rel, recursive=False)
        _add_bytes(tar, "info/index.json", json.dumps(index, indent=1).encode())
        _add_bytes(tar, "info/paths.json", json.dumps({"paths": paths, "paths_version": 1}, indent=1).encode())
        _add_bytes(tar, "info/files", "".join(f"{rel}\n" for rel in sorted(pkg.files)).encode())
    return archive


def build_channel(root: Path, packages: list[Package]) -> Path:
    """A channel directory with `packages` in linux-64, indexed by py-rattler (repodata.json)."""
    import asyncio

    from rattler.index import index_fs

    (root / "noarch").mkdir(parents=True, exist_ok=True)
    for pkg in packages:
        write_package(root / SUBDIR, pkg)
    asyncio.run(index_fs(root, write_zst=False, write_shards=False, force=True))
    return root


def tree_files(base: Path, prefix: str = "") -> dict[str, Path]:
    """Every regular file under `base`, keyed by its path below `base` (under `prefix`)."""
    return {f"{prefix}{p.relative_to(base)}": p for p in sorted(base.rglob("*")) if p.is_file() and not p.is_symlink()}
