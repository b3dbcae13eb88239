"""Plans for another machine (`doctor --snapshot FILE`): every path on it comes from one workdir.

The serve argv, its environment and the disk check all speak of the same place on that machine:
`--target-workdir PATH` when given; else the workdir the snapshot was taken for (its disk was
measured there); else the placeholder `$WORKDIR`. This machine's workdir never appears.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsv4setup.core.workdir import Workdir

PLACEHOLDER = "$WORKDIR"


def aim_at_target(snapshot: dict[str, Any], given: Path | None) -> tuple[dict[str, Any], Workdir]:
    """The snapshot judged for the target workdir, and that workdir (`chosen_by` says why)."""
    host = dict(snapshot.get("host") or {})
    recorded = host.get("workdir")
    if given is not None:
        path, why = str(given), "--target-workdir"
    elif recorded:
        path, why = str(recorded), "the workdir the snapshot was taken for"
    else:
        path, why = PLACEHOLDER, "a placeholder: the snapshot names no workdir (pass --target-workdir PATH)"
    if path != recorded:
        host["workdir"] = path
        host["workdir_contents"] = {}  # what the snapshot found was in another directory
    return {**snapshot, "host": host}, Workdir(Path(path), why)
