"""The `dsv4setup.patches/2` document: what `dsv4setup patches` prints with --json.

Each patch is a finding (`id`, `status` pass|warn|fail|skip, `summary`, `fix`, `command`) with the
patch's own `state` (applied, applicable, upstream, not-applicable, conflict) and what it is about.
Version 2: `status` became the finding status, the patch status moved to `state`, `detail` to `summary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from dsv4setup.patches.status import PatchReport
from dsv4setup.patches.target import Target

PATCHES_SCHEMA = "dsv4setup.patches/2"
Action = Literal["status", "apply", "revert"]


def patch_entry(report: PatchReport) -> dict[str, Any]:
    spec = report.patch.spec
    return {
        **report.finding.to_dict(),
        "state": report.status,
        "files": list(report.files),
        "upstream": list(spec.upstream),
        "kind": spec.kind,
        "title": spec.title,
        "fixes": {"symptom": spec.fixes.symptom, "error": spec.fixes.error},
        "diff": report.diff.path.name if report.diff else None,
        "diff_sha256": report.diff.sha256 if report.diff else None,
    }


def patches_doc(action: Action, target: Target, reports: Sequence[PatchReport],
                changed: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "schema": PATCHES_SCHEMA,
        "action": action,
        "ok": not any(r.status == "conflict" for r in reports),
        "target": target.describe(),
        "changed": list(changed),
        "patches": [patch_entry(r) for r in reports],
    }
