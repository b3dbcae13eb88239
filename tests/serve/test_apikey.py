"""API keys: none on loopback, generated and kept 0600 off loopback, the user's always, never in clear text."""

from __future__ import annotations

import stat

import pytest

from dsv4setup.core.secrets import redact
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.apikey import api_key_file, client_api_key, server_api_key


@pytest.fixture(autouse=True)
def _no_user_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSV4SETUP_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)


def test_loopback_needs_no_key(workdir: Workdir) -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert server_api_key(workdir, host) is None
    assert not api_key_file(workdir).exists()
    assert client_api_key(workdir) == "EMPTY"


def test_another_address_gets_a_generated_key_kept_0600_and_redacted(workdir: Workdir) -> None:
    key = server_api_key(workdir, "0.0.0.0")
    assert key and len(key) >= 32
    path = api_key_file(workdir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert server_api_key(workdir, "192.0.2.10") == key  # kept, not regenerated
    assert client_api_key(workdir) == key
    assert redact(f"Authorization: Bearer {key}") == "Authorization: Bearer ***"


def test_a_key_file_readable_by_others_is_tightened(workdir: Workdir) -> None:
    path = api_key_file(workdir)
    path.parent.mkdir(parents=True)
    path.write_text("user-written-key-123\n")
    path.chmod(0o644)
    assert server_api_key(workdir, "0.0.0.0") == "user-written-key-123"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_users_key_wins_everywhere(workdir: Workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSV4SETUP_API_KEY", "the-users-own-key")
    assert server_api_key(workdir, "127.0.0.1") == "the-users-own-key"
    assert server_api_key(workdir, "0.0.0.0") == "the-users-own-key"
    assert not api_key_file(workdir).exists()
    assert client_api_key(workdir) == "the-users-own-key"
