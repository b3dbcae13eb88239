"""Patch paths from outside data (the manifest's diff names, the backup index) stay under their roots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsv4setup.core.fsutil import PathEscapeError
from dsv4setup.patches.backups import Backups
from dsv4setup.patches.manifest import ManifestError, load_manifest
from dsv4setup.patches.target import find_target
from tests.patches.helpers import diff_patch, make_site_packages, source, unified_diff, write_manifest


def test_a_diff_outside_the_manifest_folder_is_refused(tmp_path: Path) -> None:
    rel = "vllm/model.py"
    (tmp_path / "outside.diff").write_text(unified_diff(rel, source("m"), source("m") + "# FIXED_P\n"))
    path = write_manifest(tmp_path / "manifest", [diff_patch("p", rel, "../outside.diff")], {})
    with pytest.raises(ManifestError, match=r"names '\.\./outside\.diff', which is not a path inside"):
        load_manifest(path)


def test_a_tampered_backup_index_cannot_restore_or_delete_outside_the_backup_folder(tmp_path: Path) -> None:
    site = make_site_packages(tmp_path / "site", {"vllm/model.py": source("m")})
    target = find_target(site)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    backups = Backups(target)
    target.backup_dir.mkdir()
    backups.index_path.write_text(json.dumps({"files": {"../../../victim.txt": {"patched_sha256": "x"}}}))
    with pytest.raises(PathEscapeError, match="backup index"):
        backups.forget(["../../../victim.txt"])
    with pytest.raises(PathEscapeError, match="patch manifest"):
        target.path("../victim.txt")
    assert victim.read_text() == "keep me"
