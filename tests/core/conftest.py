"""Fixtures shared by the engine tests of tests/core."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def steps_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The marker folder of tests/core/steps_for_tests.py, with none of its env knobs set."""
    path = tmp_path / "markers"
    path.mkdir()
    monkeypatch.setenv("TEST_STEPS_DIR", str(path))
    for var in ("TEST_STEPS_FAIL", "TEST_STEPS_SLOW", "TEST_STEPS_INPUT", "TEST_STEPS_MEET", "TEST_STEPS_AFTER_FAILED",
                "TEST_STEPS_CHILD", "TEST_STEPS_WAIT_S"):
        monkeypatch.delenv(var, raising=False)
    return path
