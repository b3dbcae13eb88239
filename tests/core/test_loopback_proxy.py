"""With HTTP_PROXY/HTTPS_PROXY/ALL_PROXY pointing at a real recording proxy, nothing we send to our own
server reaches it: the metrics reader, the smoke test's openai client, the health probe and the bench
client's environment all go direct. The server is a small OpenAI-compatible stand-in (a real HTTP
server in a thread); what is under test is the clients' routing, not vLLM."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from dsv4setup.core.loopback import no_proxy_env
from dsv4setup.serve.metrics import fetch_metrics
from dsv4setup.serve.readiness import health_status
from dsv4setup.smoke.probe import SmokeRequest, run_smoke
from dsv4setup.top.scrape import scrape

KEY = "sk-loopback-test-key-123456"
METRICS = "# TYPE vllm:spec_decode_num_drafts counter\nvllm:spec_decode_num_drafts_total 0\n"


class Recorder(http.server.BaseHTTPRequestHandler):
    """The proxy: records every request line and header set, answers 502."""

    seen: list[str] = []

    def _record(self) -> None:
        Recorder.seen.append(f"{self.command} {self.path} {dict(self.headers)}")
        self.send_response(502)
        self.end_headers()

    do_GET = do_POST = do_CONNECT = _record  # noqa: N815 (http.server API)

    def log_message(self, *_args: object) -> None:
        return


class OpenAIStandIn(http.server.BaseHTTPRequestHandler):
    def _send(self, doc: object | str) -> None:
        body = (doc if isinstance(doc, str) else json.dumps(doc)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path == "/health":
            self._send("")
        elif self.path == "/metrics":
            self._send(METRICS)
        else:
            self._send({"object": "list", "data": [{"id": "tiny", "object": "model", "created": 0, "owned_by": "x"}]})

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send({"id": "c", "object": "chat.completion", "created": 0, "model": "tiny", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Paris"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def log_message(self, *_args: object) -> None:
        return


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    Recorder.seen = []
    for port in _serve(Recorder):
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        yield Recorder.seen


@pytest.fixture
def server_port() -> Iterator[int]:
    yield from _serve(OpenAIStandIn)


def test_the_proxy_does_receive_what_an_ordinary_client_sends(proxy: list[str], server_port: int) -> None:
    """The setup is sensitive: a default urllib client goes to the proxy for 127.0.0.1."""
    # a fresh opener: urllib.request.urlopen would cache one with this proxy for the rest of the test session
    with pytest.raises(OSError):
        urllib.request.build_opener().open(f"http://127.0.0.1:{server_port}/metrics", timeout=5)
    assert len(proxy) == 1 and f"127.0.0.1:{server_port}/metrics" in proxy[0]


def test_metrics_health_and_smoke_go_direct(proxy: list[str], server_port: int) -> None:
    base = f"http://127.0.0.1:{server_port}"
    assert "spec_decode_num_drafts" in fetch_metrics(base, KEY)
    assert health_status("127.0.0.1", server_port) == 200
    report = run_smoke(SmokeRequest(base_url=base, api_key=KEY, model="tiny", prompt="capital of France?",
                                    expect="Paris", max_tokens=4, num_speculative_tokens=1, min_acceptance=0.0,
                                    timeout_s=10, metrics_settle_s=0.1))
    assert report.models == ["tiny"] and report.content == "Paris"
    top = scrape(base, KEY)  # `dsv4setup top`
    assert top.error is None and top.health == 200
    assert proxy == []


def test_the_bench_client_environment_bypasses_the_proxy(proxy: list[str], server_port: int) -> None:
    """A child that honours the proxy variables (urllib and httpx, as vLLM's bench client does) goes direct."""
    code = ("import os, sys, urllib.request, httpx2\n"
            "url = sys.argv[1]\n"
            "urllib.request.urlopen(url, timeout=5).read()\n"
            "httpx2.Client(trust_env=True).get(url).raise_for_status()\n")
    env = {**os.environ, **no_proxy_env("127.0.0.1")}
    done = subprocess.run([sys.executable, "-c", code, f"http://127.0.0.1:{server_port}/metrics"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert proxy == []


def test_no_proxy_keeps_what_was_there_and_adds_the_served_host() -> None:
    env = no_proxy_env("10.0.0.5", {"no_proxy": "corp.example, .internal"})
    assert env["NO_PROXY"] == env["no_proxy"] == "corp.example,.internal,127.0.0.1,localhost,::1,[::1],10.0.0.5"
