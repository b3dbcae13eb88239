"""vLLM patches as data: manifest, target detection, status, atomic apply and revert."""

from dsv4setup.patches.apply import (
    ActionResult,
    PatchConflictError,
    apply_patches,
    reinstall_hint,
    revert_patches,
)
from dsv4setup.patches.manifest import Manifest, ManifestError, Patch, load_manifest
from dsv4setup.patches.report import PATCHES_SCHEMA, patches_doc
from dsv4setup.patches.status import STATUSES, PatchReport, check_patch, check_patches
from dsv4setup.patches.target import Target, default_target, find_target

__all__ = [
    "PATCHES_SCHEMA", "STATUSES", "ActionResult", "Manifest", "ManifestError", "Patch", "PatchConflictError",
    "PatchReport", "Target", "apply_patches", "check_patch", "check_patches", "default_target", "find_target",
    "load_manifest", "patches_doc", "reinstall_hint", "revert_patches",
]
