"""The workdir: one directory holds everything of one deployment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

ENV_WORKDIR = "DSV4SETUP_WORKDIR"


@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def resolve(cls, explicit: Path | None = None) -> Workdir:
        """--workdir, else $DSV4SETUP_WORKDIR, else the platform's user data dir."""
        if explicit is not None:
            root = explicit
        elif os.environ.get(ENV_WORKDIR):
            root = Path(os.environ[ENV_WORKDIR])
        else:
            root = Path(platformdirs.user_data_dir("dsv4setup")) / "default"
        return cls(root.expanduser().absolute())

    def ensure(self) -> Workdir:
        for path in (self.root, self.logs_dir, self.run_dir):
            path.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def state_file(self) -> Path:
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
        """The serving venv that holds vLLM (managed, never imported by dsv4setup)."""
        return self.root / "venv"

    @property
    def venv_python(self) -> Path:
        return self.venv_dir / "bin" / "python"

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
