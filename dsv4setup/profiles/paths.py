"""Where a profile's artefacts live inside the workdir."""

from __future__ import annotations

from pathlib import Path

from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.model import Profile


def checkpoint_dir(profile: Profile, workdir: Workdir) -> Path:
    """The directory vLLM loads: a local path as given, a generated model, or the downloaded repo."""
    model = profile.model
    if model.local_path:
        return Path(model.local_path).expanduser().absolute()
    if model.generate:
        return workdir.models_dir / model.generate
    if model.repo:
        return workdir.models_dir / model.repo.replace("/", "--")
    raise ValueError(f"profile {profile.name}: model needs one of repo, local_path, generate")
