"""kill -9 between the renames of a patch set (a real SIGKILL of a real process, at the exact point:
the driver below kills itself right after the first patched file is renamed into place). The next
apply rolls the half-applied set back from its backups and applies it whole; a half-reverted set is
finished the same way. Synthetic vLLM tree, real GNU patch."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4setup.patches.apply import apply_patches, revert_patches
from dsv4setup.patches.manifest import load_manifest
from dsv4setup.patches.status import check_patches
from dsv4setup.patches.target import find_target
from tests.faults.tally import record
from tests.patches.conftest import Synth, build_synth
from tests.patches.helpers import diff_patch, unified_diff, write_manifest

DRIVER = """
import os, signal, sys
from pathlib import Path
from dsv4setup.patches.apply import apply_patches, revert_patches
from dsv4setup.patches.manifest import load_manifest
from dsv4setup.patches.target import find_target
site, manifest, action = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
first = str(site / "vllm" / "alpha.py")
real = os.replace
def replace(src, dst, **kw):
    real(src, dst, **kw)
    if str(dst) == first:
        os.kill(os.getpid(), signal.SIGKILL)  # between the first and the second file
os.replace = replace
(apply_patches if action == "apply" else revert_patches)(load_manifest(manifest), find_target(site))
"""


def one_patch_over_two_files(tmp_path: Path) -> tuple[Synth, Path]:
    synth = build_synth(tmp_path)
    both = "".join(unified_diff(rel, synth.original[rel], synth.patched[rel]) for rel in synth.original)
    patch = diff_patch("both-fix", "vllm/alpha.py", "both.diff", fixed="FIXED_ALPHA_FIX")
    patch["files"] = ["vllm/alpha.py", "vllm/beta.py"]
    return synth, write_manifest(tmp_path / "m2", [patch], {"both.diff": both})


def killed(site: Path, manifest: Path, action: str) -> int:
    return subprocess.run([sys.executable, "-c", DRIVER, str(site), str(manifest), action],
                          capture_output=True, timeout=120, check=False).returncode


@pytest.mark.parametrize("action", ["apply", "revert"])
def test_a_patch_set_killed_halfway_is_recovered_on_the_next_run(tmp_path: Path, action: str) -> None:
    synth, manifest_path = one_patch_over_two_files(tmp_path)
    manifest, target = load_manifest(manifest_path), find_target(synth.site)
    if action == "revert":
        apply_patches(manifest, target)
    assert killed(synth.site, manifest_path, action) == -signal.SIGKILL
    [half] = check_patches(list(manifest.patches), target)
    assert half.status == "conflict" and "partially patched" in half.detail  # what the kill left
    messages: list[str] = []
    if action == "apply":
        result = apply_patches(manifest, target, log=messages.append)
        wanted, status = synth.patched, "applied"
    else:
        result = revert_patches(manifest, target, log=messages.append)
        wanted, status = synth.original, "applicable"
    files = {rel: (synth.site / rel).read_text() for rel in synth.original}
    ok = [r.status for r in result.reports] == [status] and files == wanted
    record("kill -9", f"patch set, between two renames ({action})", survived=ok, data_lost=not ok)
    assert any("stopped halfway" in m for m in messages)
    assert ok, (result.reports, files == wanted)
    assert not (synth.site / ".dsv4setup-backup" / "journal.json").exists()
