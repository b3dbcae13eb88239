"""The workdir: one directory holds everything of one deployment.

Which one, in this order: `--workdir`; else `$DSV4SETUP_WORKDIR`; else the workdir that
contains the current directory (a directory holding state.json or dsv4setup.yaml); else the
last one `up` used (recorded in the user's state dir); else `<user data dir>/default`.
`chosen_by` says which rule picked it; every command's header shows it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from dsv4setup.core.generations import current_venv

ENV_WORKDIR = "DSV4SETUP_WORKDIR"
MARKERS = ("state.json", "dsv4setup.yaml")  # what makes a directory a workdir


def last_used_file() -> Path:
    return Path(platformdirs.user_state_dir("dsv4setup")) / "last-workdir"


def remember(root: Path) -> None:
    """Record the workdir a run used, for commands run later from elsewhere without --workdir."""
    path = last_used_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(root) + "\n", encoding="utf-8")
    except OSError:
        pass  # a read-only home only loses the convenience


def _containing(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        if any((directory / marker).is_file() for marker in MARKERS):
            return directory
    return None


def _last_used() -> Path | None:
    try:
        text = last_used_file().read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(text) if text and _containing(Path(text)) == Path(text) else None


@dataclass(frozen=True)
class Workdir:
    root: Path
    chosen_by: str = field(default="given", compare=False)
    # a generation being built beside the current one (`upgrade`): its venv and its own build state
    building: Path | None = field(default=None, compare=False)

    @classmethod
    def resolve(cls, explicit: Path | None = None) -> Workdir:
        """--workdir, else $DSV4SETUP_WORKDIR, else the one containing the cwd, else the last used, else default."""
        if explicit is not None:
            return cls(explicit.expanduser().absolute(), "--workdir")
        if os.environ.get(ENV_WORKDIR):
            return cls(Path(os.environ[ENV_WORKDIR]).expanduser().absolute(), f"${ENV_WORKDIR}")
        here = _containing(Path.cwd())
        if here is not None:
            return cls(here.absolute(), "contains the current directory")
        last = _last_used()
        if last is not None:
            return cls(last.absolute(), f"the last one used (recorded in {last_used_file()})")
        return cls((Path(platformdirs.user_data_dir("dsv4setup")) / "default").absolute(), "the default")

    @property
    def header(self) -> str:
        return f"workdir {self.root} ({self.chosen_by})"

    def ensure(self) -> Workdir:
        for path in (self.root, self.logs_dir, self.run_dir):
            path.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def state_file(self) -> Path:
        """The state file; while a generation is built beside the current one, that build's own."""
        if self.building is not None:  # beside the venv, which the install clears
            return self.building.parent / f".{self.building.name}.build-state.json"
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def log_file(self, step: str) -> Path:
        return self.logs_dir / f"{step}.log"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def serve_pid_file(self) -> Path:
        return self.run_dir / "serve.pid"

    @property
    def venv_dir(self) -> Path:
        """The serving venv that holds vLLM (managed, never imported by dsv4setup): the current generation
        (core/generations.py), or the one being built. Every use of the serving venv goes through here."""
        return self.building if self.building is not None else current_venv(self.root)

    @property
    def venv_python(self) -> Path:
        return self.venv_dir / "bin" / "python"

    @property
    def vllm_cache_dir(self) -> Path:
        """vLLM's VLLM_CACHE_ROOT for the server: model-class inspections, compile caches."""
        return self.root / "cache" / "vllm"

    @property
    def toolkit_dir(self) -> Path:
        return self.root / "toolkit"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def overrides_file(self) -> Path:
        """User overrides merged over the profile (see profiles)."""
        return self.root / "dsv4setup.yaml"

    @property
    def bench_dir(self) -> Path:
        return self.root / "bench"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"
