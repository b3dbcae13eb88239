"""Fixtures of the hub tests: generated checkpoints and the local hub serving them.

The hub is a test fixture (tests/checkpoint/hubserver.py); every client call under test is the real
huggingface_hub, pointed at it with HF_ENDPOINT (read at call time by dsv4setup.hub.access).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.checkpoint.ckptgen import CkptSpec, write_v4_checkpoint
from tests.checkpoint.hubserver import HubServer, RepoSpec

REPO = "deepseek-test/V4-Tiny-MTP"
TOKEN = "hf_testtoken_0123456789abcdef"


@pytest.fixture(autouse=True)
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real token, cache or offline switch leaks in; the HF cache lives in tmp."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "DSV4SETUP_HF_CACHE", "DSV4SETUP_RUNBOOK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """make_checkpoint(name, **CkptSpec fields) -> a DeepSeek-V4-style checkpoint directory."""

    def make(name: str = "ckpt", **fields: object) -> Path:
        return write_v4_checkpoint(tmp_path / "src" / name, CkptSpec(**fields))  # type: ignore[arg-type]

    return make


@pytest.fixture
def serve_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., HubServer]]:
    """serve_hub({repo: dir | RepoSpec}, tokens=...) -> a started HubServer; HF_ENDPOINT points at it."""
    started: list[HubServer] = []

    def serve(repos: Mapping[str, Path | RepoSpec], tokens: Mapping[str, set[str]] | None = None) -> HubServer:
        specs = {rid: spec if isinstance(spec, RepoSpec) else RepoSpec({"main": spec}) for rid, spec in repos.items()}
        hub = HubServer(specs, tokens=tokens).start()
        started.append(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        return hub

    yield serve
    for hub in started:
        hub.stop()
