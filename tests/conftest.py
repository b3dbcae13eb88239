"""Shared fixtures: a temporary workdir, a minimal profile, the download cache of one CI run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.model import ModelSpec, Profile

REPO_ROOT = Path(__file__).resolve().parent.parent


def _import_huggingface_hub_with_its_default_endpoint() -> None:
    """huggingface_hub reads HF_ENDPOINT once, at import, and follows redirects to that origin as to
    the Hub's own. Tests point HF_ENDPOINT at short-lived local hubs: were the first import made inside
    one of them, a later test's CDN that got the same port back would be taken for the Hub, and the
    client would read the file's metadata from the CDN (no X-Repo-Commit). Import it before any test."""
    saved = os.environ.pop("HF_ENDPOINT", None)
    try:
        import huggingface_hub.constants  # noqa: F401 - the import itself is the point
    finally:
        if saved is not None:
            os.environ["HF_ENDPOINT"] = saved


_import_huggingface_hub_with_its_default_endpoint()


@pytest.fixture(autouse=True)
def user_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where `up` records the last workdir: never the real user's state dir in tests."""
    path = tmp_path_factory.mktemp("xdg-state")
    monkeypatch.setenv("XDG_STATE_HOME", str(path))
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    return Workdir(tmp_path / "wd").ensure()


@pytest.fixture
def profile() -> Profile:
    return Profile(name="test-profile", description="in-test profile", source="tests",
                   model=ModelSpec(local_path="/nonexistent"))


@pytest.fixture(scope="session")
def test_cache() -> Path:
    """Downloads and venvs shared by all tests of one run (git-ignored)."""
    path = Path(os.environ.get("DSV4SETUP_TEST_CACHE", REPO_ROOT / ".wcache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
