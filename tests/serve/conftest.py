"""Fixtures of the serve tests: a fake server process, free ports, schema validation, cleanup checks."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import psutil
import pytest

from dsv4setup.core.resources import package_file
from dsv4setup.serve.process import SERVE_ID_ENV, ServerRecord

FAKE_SERVER = Path(__file__).with_name("fake_server.py")
FIXTURES = Path(__file__).with_name("fixtures")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fake_argv(mode: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, str(FAKE_SERVER), "--mode", mode, "--port", str(port), *extra]


def processes_with_id(serve_id: str) -> list[psutil.Process]:
    """Live processes that carry a server id (the whole tree of one server)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(SERVE_ID_ENV) == serve_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def validate(doc: dict[str, object], schema: str) -> None:
    jsonschema.validate(doc, json.loads(package_file("schemas", f"{schema}.schema.json").read_text()),
                        cls=jsonschema.Draft202012Validator)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def reaper() -> Iterator[list[ServerRecord]]:
    """Records of servers a test started: anything left alive is killed after the test (and fails it)."""
    records: list[ServerRecord] = []
    yield records
    leftovers = [p for r in records for p in processes_with_id(r.serve_id)]
    for proc in leftovers:
        proc.kill()
    assert not leftovers, f"server processes left behind: {leftovers}"
