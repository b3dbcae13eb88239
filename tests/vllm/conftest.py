"""Fixtures for the vllm step: offline tiny wheels, a venv template, the recording fake pip."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4setup.core.workdir import Workdir
from tests.vllm.helpers import tiny_index, write_fake_pip


@pytest.fixture(scope="session")
def tiny_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_index(tmp_path_factory.mktemp("wheels"))


@pytest.fixture
def offline_pip(tiny_wheels: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only the tiny wheels: real installs in seconds, no network."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tiny_wheels))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return tiny_wheels


@pytest.fixture(scope="session")
def venv_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real venv, copied into each workdir that needs one (the step reuses a matching venv)."""
    path = tmp_path_factory.mktemp("venv-template") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def bare_venv_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv without pip, for tests whose pip is the recording fake (a copy takes milliseconds)."""
    path = tmp_path_factory.mktemp("bare-venv-template") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path


@pytest.fixture
def seeded_workdir(workdir: Workdir, venv_template: Path) -> Workdir:
    shutil.copytree(venv_template, workdir.venv_dir, symlinks=True)
    return workdir


@pytest.fixture
def bare_workdir(workdir: Workdir, bare_venv_template: Path) -> Workdir:
    shutil.copytree(bare_venv_template, workdir.venv_dir, symlinks=True)
    return workdir


@pytest.fixture
def fake_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The recording fake pip first on PYTHONPATH; returns its record file."""
    record = tmp_path / "pip-calls.jsonl"
    monkeypatch.setenv("PYTHONPATH", str(write_fake_pip(tmp_path / "fakepip")))
    monkeypatch.setenv("FAKE_PIP_RECORD", str(record))
    return record
