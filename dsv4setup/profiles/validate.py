"""`profile validate`: check profile files (or a workdir's dsv4setup.yaml) against the schema.

Each file gets one result; each problem is reported as where (file:line), key and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsv4setup.core.errors import UsageError
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.loader import (
    ProfileError,
    load_named_file,
    load_profile_file,
    shipped_profile_files,
    user_profiles_dir,
)

if TYPE_CHECKING:
    from dsv4setup.profiles.resolve import Probe

VALIDATE_SCHEMA = "dsv4setup.profile-validate/1"


def validate_one(path: Path, named: bool, probe: Probe | None = None) -> dict[str, Any]:
    """One file: a profile (named: its name must match the file), or a workdir's dsv4setup.yaml
    (naming no profile: the one `probe` picks for this machine)."""
    from dsv4setup.profiles.resolve import resolve_profile

    try:
        if path.name == Workdir(path.parent).overrides_file.name:
            name = resolve_profile(Workdir(path.parent.absolute()), None, [], probe=probe).profile.name
        else:
            name = (load_named_file(path) if named else load_profile_file(path)).name
    except ProfileError as exc:
        return {"file": str(path), "name": None, "ok": False, "issues": [i.to_dict() for i in exc.issues]}
    except UsageError as exc:
        return {"file": str(path), "name": None, "ok": False,
                "issues": [{"where": str(path), "key": "", "message": exc.message}]}
    return {"file": str(path), "name": name, "ok": True, "issues": []}


def validate_doc(workdir: Workdir, files: list[Path] | None, probe: Probe | None = None) -> dict[str, Any]:
    """The `dsv4setup.profile-validate/1` document for `files`, or for every shipped and workdir profile."""
    paths = list(files or [*shipped_profile_files(), *sorted(user_profiles_dir(workdir).glob("*.yaml"))])
    if not files and workdir.overrides_file.exists():
        paths.append(workdir.overrides_file)
    results = [validate_one(p, named=not files, probe=probe) for p in paths]
    return {"schema": VALIDATE_SCHEMA, "ok": all(r["ok"] for r in results), "results": results}
