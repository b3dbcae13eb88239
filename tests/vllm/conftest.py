"""Fixtures for the vllm step: offline tiny wheels, the recording fake pip."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.fixture
def fake_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The recording fake pip first on PYTHONPATH; returns its record file."""
    record = tmp_path / "pip-calls.jsonl"
    monkeypatch.setenv("PYTHONPATH", str(write_fake_pip(tmp_path / "fakepip")))
    monkeypatch.setenv("FAKE_PIP_RECORD", str(record))
    return record
