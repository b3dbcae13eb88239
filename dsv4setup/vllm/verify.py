"""Verifying the serving venv at stat speed, as strongly as re-reading it.

- The freeze file written after the install (`uv pip freeze`) must name exactly the
  distributions installed now, at the same versions (read from the dist-info directory
  names: no interpreter starts).
- Every file the vLLM distribution installed must still have the sha256 its RECORD lists,
  except files the patches step rewrote (its backup index names their patched sha256; that
  step checks them). Hashing ~500 MB takes seconds, so each result is kept as a proof keyed
  on the file's stat (size, mtime_ns, ctime_ns, inode): every write moves ctime, which no
  user can set back, so a file whose stat equals its proof was not touched since it was
  hashed. Only files whose stat moved are hashed again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from packaging.version import InvalidVersion, Version

from dsv4setup.core.fsutil import atomic_write_text
from dsv4setup.download.verify import sha256_file
from dsv4setup.patches.target import parse_record
from dsv4setup.vllm.build import normalize
from dsv4setup.vllm.installer import parse_freeze
from dsv4setup.vllm.probe import dist_infos

PROOF_FILE = "dsv4setup-record-proof.json"  # inside the venv, beside the freeze file
_PATCH_INDEX = Path(".dsv4setup-backup") / "index.json"


def same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def freeze_drift(site: Path, freeze: Path) -> str | None:
    """What differs between the freeze file and the installed distributions; None when they agree."""
    try:
        text = freeze.read_text(encoding="utf-8")
    except OSError:
        return f"no freeze file {freeze} (the install did not finish)"
    frozen = parse_freeze(text)
    unnamed = sum(1 for line in text.splitlines() if line.startswith("-e ") or " @ " in line)  # editable/URL
    installed = {name: version for name, (version, _info) in dist_infos(site).items()}
    changed = [f"{name} {version} -> {installed.get(name, 'removed')}" for name, version in sorted(frozen.items())
               if name not in installed or not same_version(installed[name], version)]
    if changed:
        return f"installed packages differ from {freeze.name}: {', '.join(changed[:5])}"
    extra = sorted(set(installed) - set(frozen))
    if len(extra) > unnamed:
        return f"installed since {freeze.name} was written: {', '.join(extra[:5])}"
    return None


def _patched(site: Path) -> dict[str, str]:
    """rel path -> sha256 the patches step wrote there."""
    try:
        files = json.loads((site / _PATCH_INDEX).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError):
        return {}
    return {rel: str(entry.get("patched_sha256")) for rel, entry in files.items() if isinstance(entry, dict)}


def record_drift(site: Path, package: str, proof_file: Path) -> str | None:
    """The first file of `package` that no longer matches its RECORD; None when all do (proof updated)."""
    entry = dist_infos(site).get(normalize(package))
    if entry is None:
        return f"{package} has no dist-info in {site}"
    try:
        record_text = (entry[1] / "RECORD").read_text(encoding="utf-8")
    except OSError:
        return f"{entry[1] / 'RECORD'} is missing: the install of {package} is incomplete"
    record_id = hashlib.sha256(record_text.encode()).hexdigest()
    try:
        proof = json.loads(proof_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        proof = {}
    proven: dict[str, list[int]] = proof.get("files", {}) if proof.get("record") == record_id else {}
    patched = _patched(site)
    now: dict[str, list[int]] = {}
    for rel, digest in parse_record(record_text).items():
        path = site / rel
        try:
            st = path.stat()
        except OSError:
            return f"{path} of {package} is missing"
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        if proven.get(rel) != key:
            actual = sha256_file(path)
            if actual != digest and patched.get(rel) != actual:
                return f"{path} differs from {package}'s RECORD (changed after the install)"
        now[rel] = key
    if now != proven:
        atomic_write_text(proof_file, json.dumps({"record": record_id, "files": now}))
    return None
