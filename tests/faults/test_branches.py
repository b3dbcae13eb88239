"""Faults while both branches of one `up` run (the download beside toolkit -> vllm -> patches): kill -9 of
the whole `up`, kill -9 of the install branch's child process, and a failure in each branch while the
other runs. Real `dsv4setup up` subprocesses, real engine, state, lock and CLI; the steps are the
marker steps of tests/core/steps_for_tests.py's `branch_steps` (root; build -> patch beside fetch; lint
after fetch and build; join after all). Each fault is followed by an `up` that must finish it all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.core import steps_for_tests as ts
from tests.faults.tally import record

WAIT_S = 60


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return ts.marker_env(tmp_path, "branch_steps", TEST_STEPS_MEET="build,fetch")


def dsv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsv4setup", *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def up(env: dict[str, str], **knobs: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dsv4setup", "up", "--profile", "cpu-tiny", "--yes", "--json"],
                            env={**env, **knobs}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert proc.poll() is None, f"up exited ({proc.returncode}) before {path.name}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def state_steps(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = json.loads((Path(env["DSV4SETUP_WORKDIR"]) / "state.json").read_text())[
        "steps"]
    return steps


def status_rows(env: dict[str, str]) -> dict[str, str]:
    result = dsv(env, "status", "--no-verify", "--json")
    assert result.returncode == 0, result.stderr
    return {row["step"]: row["status"] for row in json.loads(result.stdout)["steps"]}


def resume_to_done(env: dict[str, str]) -> dict[str, str]:
    """The next `up`, as a user runs it: every step done; what each did."""
    resumed = dsv(env, "up", "--profile", "cpu-tiny", "--yes", "--json")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert set(status_rows(env).values()) == {"done"}
    return {d["step"]: d["action"] for d in json.loads(resumed.stdout)["decisions"]}


def test_kill_9_of_up_while_both_branches_run_then_resume(env: dict[str, str]) -> None:
    markers = Path(env["TEST_STEPS_DIR"])
    proc = up(env, TEST_STEPS_SLOW="build,fetch", TEST_STEPS_SLEEP="120")
    wait_for(markers / "build.started", proc)
    wait_for(markers / "fetch.started", proc)
    both_running = {n: state_steps(env)[n]["status"] for n in ("build", "fetch")} == {"build": "running",
                                                                                        "fetch": "running"}
    root_finished = state_steps(env)["root"]["finished_at"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        after_kill, torn = status_rows(env), False
    except (ValueError, AssertionError):
        after_kill, torn = {}, True
    actions = resume_to_done(env)
    steps = state_steps(env)
    lost = torn or steps["root"]["finished_at"] != root_finished
    record("kill -9", "up while both branches run", survived=both_running and actions["root"] == "skip",
           data_lost=lost)
    assert both_running and not lost
    assert after_kill == {"root": "done", "build": "interrupted", "patch": "pending", "fetch": "interrupted",
                          "lint": "pending", "join": "pending"}
    assert actions == {"root": "skip", "build": "run", "patch": "run", "fetch": "run", "lint": "run", "join": "run"}
    assert sorted(ts.journal(markers)) == sorted(["root", "build", "fetch", *ts.BRANCHES[1:]])  # root ran once
    assert steps["build"]["attempts"] == steps["fetch"]["attempts"] == 2


@pytest.mark.parametrize(("failing", "other"), [("build", "fetch"), ("fetch", "build")])
def test_a_failure_in_one_branch_while_the_other_runs(env: dict[str, str], failing: str, other: str) -> None:
    """build: its child process is killed with -9 (the install's pip or uv dying); fetch: the step raises (the
    hub refusing). The other branch finishes its step, nothing new starts, `up` exits 1 naming the failed
    step, and `next` names it too."""
    markers = Path(env["TEST_STEPS_DIR"])
    knobs = {"TEST_STEPS_AFTER_FAILED": f"{other}:{failing}", "TEST_STEPS_SLEEP": "120"}
    knobs.update({"TEST_STEPS_CHILD": "build"} if failing == "build" else {"TEST_STEPS_FAIL": "fetch"})
    proc = up(env, **knobs)
    if failing == "build":
        wait_for(markers / "build.child", proc)
        os.kill(int((markers / "build.child").read_text()), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)
    doc = json.loads(stdout)
    after = status_rows(env)
    nxt = json.loads(dsv(env, "next", "--json").stdout)
    named = proc.returncode == 1 and doc["failed_step"] == failing and nxt["step"] == failing
    finished_other = after[other] == "done" and not {"patch", "lint", "join"} & set(state_steps(env))
    record("kill -9" if failing == "build" else "step failure",
           f"{'the install branch child' if failing == 'build' else 'the download branch'} while the other runs",
           survived=named and finished_other)
    assert proc.returncode == 1, stderr[-3000:]
    assert doc["failed_step"] == failing and failing in doc["error"]["message"]
    assert after == {"root": "done", "build": "done" if other == "build" else "failed", "patch": "pending",
                     "fetch": "done" if other == "fetch" else "failed", "lint": "pending", "join": "pending"}
    assert nxt["step"] == failing and nxt["action"] in ("run", "fix")
    actions = resume_to_done({k: v for k, v in env.items() if k != "TEST_STEPS_MEET"})
    assert actions[other] == "skip" and actions[failing] == "run"
    assert ts.journal(markers).count(other) == 1


def test_ctrl_c_while_both_branches_run_records_both_interrupted_then_resume(env: dict[str, str]) -> None:
    """SIGINT to `up` (its steps sleep in-process, as the download's threads do): it exits 130 at once, both
    running steps recorded `failed` with "interrupted by the user", and the next `up` finishes them."""
    markers = Path(env["TEST_STEPS_DIR"])
    proc = subprocess.Popen([sys.executable, "-m", "dsv4setup", "up", "--profile", "cpu-tiny", "--yes"],
                            env={**env, "TEST_STEPS_SLOW": "build,fetch", "TEST_STEPS_SLEEP": "120"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    wait_for(markers / "build.started", proc)
    wait_for(markers / "fetch.started", proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)  # not the 120 s the steps sleep: the interrupted steps are left behind
    steps = state_steps(env)
    interrupted = {n: (steps[n]["status"], steps[n]["error"]["message"]) for n in ("build", "fetch")}
    record("interrupt", "Ctrl-C of up while both branches run",
           survived=proc.returncode == 130 and set(interrupted.values()) == {("failed", "interrupted by the user")})
    assert proc.returncode == 130
    assert interrupted == dict.fromkeys(("build", "fetch"), ("failed", "interrupted by the user"))
    assert resume_to_done(env)["root"] == "skip"
