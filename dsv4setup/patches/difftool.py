"""Run GNU patch on copies of the target files, never on the target itself.

Every check and every apply goes through a private staging directory: the real vLLM files
are only replaced once all hunks of all patches fitted and the results were verified.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dsv4setup.core.errors import DsvError


@dataclass(frozen=True)
class DiffOutcome:
    ok: bool
    output: str  # what patch said (for logs and conflict messages)
    files: dict[str, bytes] = field(default_factory=dict, repr=False)  # results, when ok


def patch_program() -> str:
    program = shutil.which("patch")
    if program is None:
        raise DsvError("GNU patch is not installed (needed to check and apply vLLM patches)",
                       fix="install it: `sudo apt-get install patch`, `sudo dnf install patch` or "
                            "`conda install -c conda-forge patch`, then run the command again")
    return program


def patch_argv(program: str, diff: Path, root: Path, *, reverse: bool) -> list[str]:
    """--forward: never guess that a patch is reversed (--batch alone would silently un-apply it);
    --fuzz=0: every context line must match exactly."""
    argv = [program, "-p1", "--batch", "--forward", "--fuzz=0", "--no-backup-if-mismatch",
            "--reject-file=-", "-d", str(root), "-i", str(diff)]
    if reverse:
        argv.insert(1, "--reverse")
    return argv


def run_diff(diff: Path, files: dict[str, bytes], *, reverse: bool = False) -> DiffOutcome:
    """Apply (or reverse) `diff` to in-memory copies of `files` (rel path -> bytes) in a temp dir."""
    program = patch_program()
    with tempfile.TemporaryDirectory(prefix="dsv4setup-patch-") as tmp:
        root = Path(tmp)
        for rel, data in files.items():
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        proc = subprocess.run(patch_argv(program, diff, root, reverse=reverse), capture_output=True,
                              text=True, errors="replace", stdin=subprocess.DEVNULL,
                              env={**os.environ, "LC_ALL": "C"}, check=False)
        output = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            return DiffOutcome(False, output)
        return DiffOutcome(True, output, {rel: (root / rel).read_bytes() for rel in files})
