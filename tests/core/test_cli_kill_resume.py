"""`dsv4setup up` as a real subprocess: SIGKILL mid-step, resume, lock contention, JSON output.

The steps are the marker steps of steps_for_tests (DSV4SETUP_RUNBOOK), the engine, state,
lock and CLI are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsv4setup.core.jsonschemas import validate_document
from tests.core import steps_for_tests as ts


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return ts.marker_env(tmp_path, "steps")


def dsv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsv4setup", *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def start_slow_up(env: dict[str, str], step: str) -> subprocess.Popen[str]:
    slow_env = {**env, "TEST_STEPS_SLOW": step, "TEST_STEPS_SLEEP": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "dsv4setup", "up", "--profile", "cpu-tiny", "--yes"],
                            env=slow_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            stdin=subprocess.DEVNULL)
    started = Path(env["TEST_STEPS_DIR"]) / f"{step}.started"
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None, "up exited before reaching the slow step"
        assert time.monotonic() < deadline, "slow step never started"
        time.sleep(0.1)
    return proc


def status(env: dict[str, str]) -> dict[str, str]:
    result = dsv(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "dsv4setup.status/6"
    return {row["step"]: row["status"] for row in doc["steps"]}


def test_sigkill_during_a_step_then_resume_finishes_every_step_once(env: dict[str, str]) -> None:
    proc = start_slow_up(env, "gamma")
    assert status(env)["gamma"] == "running"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert status(env)["gamma"] == "interrupted"

    resumed = dsv(env, "up", "--profile", "cpu-tiny", "--yes", "--json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["ok"] and [d["action"] for d in doc["decisions"]][:4] == ["skip", "skip", "run", "run"]
    assert "interrupted" in doc["decisions"][2]["reason"]
    # gamma started twice (the first run was killed), every step completed exactly once
    assert ts.journal(Path(env["TEST_STEPS_DIR"])) == ["alpha", "beta", "gamma", "gamma", "delta"]
    markers = sorted(p.name for p in Path(env["TEST_STEPS_DIR"]).glob("*.done"))
    assert markers == sorted(f"{n}.done" for n in ts.NAMES)
    states = status(env)
    assert all(states[n] == "done" for n in ts.NAMES)
    state = json.loads((Path(env["DSV4SETUP_WORKDIR"]) / "state.json").read_text())
    assert state["schema"] == "dsv4setup.state/2" and state["steps"]["gamma"]["attempts"] == 2

    again = dsv(env, "up", "--profile", "cpu-tiny", "--yes", "--json")
    assert again.returncode == 0
    assert [d["action"] for d in json.loads(again.stdout)["decisions"]][:4] == ["skip"] * 4


def test_second_up_exits_3_naming_the_holder(env: dict[str, str]) -> None:
    proc = start_slow_up(env, "alpha")
    try:
        second = dsv(env, "up", "--profile", "cpu-tiny", "--yes")
        assert second.returncode == 3
        assert f"pid {proc.pid}" in second.stderr and "since" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_dry_run_and_json_documents(env: dict[str, str]) -> None:
    dry = dsv(env, "up", "--profile", "cpu-tiny", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] and [d["step"] for d in doc["steps"]] == list(ts.NAMES)
    assert not (Path(env["DSV4SETUP_WORKDIR"]) / "state.json").exists()
    assert dsv(env, "--help").returncode == 0


def test_failed_step_exit_1_with_hint_and_resume_command(env: dict[str, str]) -> None:
    result = dsv({**env, "TEST_STEPS_FAIL": "beta"}, "up", "--profile", "cpu-tiny", "--yes", "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["failed_step"] == "beta" and doc["error"]["fix"] == "unset TEST_STEPS_FAIL"
    assert doc["resume"][:2] == ["dsv4setup", "up"]
    human = dsv({**env, "TEST_STEPS_FAIL": "beta"}, "up", "--profile", "cpu-tiny", "--yes")
    assert human.returncode == 1 and "fix: unset TEST_STEPS_FAIL" in human.stderr
    assert "resume with: dsv4setup up" in human.stderr and "Traceback" not in human.stderr


def test_corrupt_state_exit_2_and_reset_all_keeps_a_backup(env: dict[str, str]) -> None:
    wd = Path(env["DSV4SETUP_WORKDIR"])
    wd.mkdir()
    (wd / "state.json").write_text("{garbage")
    result = dsv(env, "status")
    assert result.returncode == 2 and "is corrupt" in result.stderr and "reset --all" in result.stderr
    assert dsv(env, "reset", "--all").returncode == 0
    backups = list(wd.glob("state.json.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == "{garbage"
    assert status(env)["alpha"] == "pending"


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    bad_step = dsv(env, "up", "--profile", "cpu-tiny", "--from", "nosuch")
    assert bad_step.returncode == 2 and "no such step" in bad_step.stderr
    assert dsv(env, "up", "--bogus-flag").returncode == 2
    assert dsv(env, "logs", "alpha").returncode == 2


def test_logs_takes_only_a_step_with_a_log_and_redacts_it(env: dict[str, str]) -> None:
    assert dsv(env, "up", "--profile", "cpu-tiny", "--yes").returncode == 0
    log = Path(env["DSV4SETUP_WORKDIR"]) / "logs" / "alpha.log"
    with log.open("a") as fh:  # as vLLM's own output lands in a log: unredacted
        fh.write("Authorization: Bearer sk-written-raw-0123456789\n")
    keyed = {**env, "DSV4SETUP_API_KEY": "sk-written-raw-0123456789"}
    for args in (("logs", "alpha"), ("logs", "alpha", "-n", "1")):
        shown = dsv(keyed, *args)
        assert shown.returncode == 0 and "Bearer ***" in shown.stdout and "sk-written" not in shown.stdout
    escape = dsv(env, "logs", "../state")
    assert escape.returncode == 2 and "no log for step '../state'" in escape.stderr
    assert "steps with a log: alpha, beta, delta, gamma" in escape.stderr and "Traceback" not in escape.stderr


def test_detached_up_survives_its_caller_and_wait_reports_running_then_done(env: dict[str, str]) -> None:
    slow = {**env, "TEST_STEPS_SLOW": "beta", "TEST_STEPS_SLEEP": "4"}
    started = dsv(slow, "up", "--profile", "cpu-tiny", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    doc = json.loads(started.stdout)
    validate_document(doc)
    assert doc["follow"][:2] == ["dsv4setup", "wait"] and Path(doc["log"]).name == "up.log"
    assert doc["follow"][-3:] == ["--timeout", "100", "--json"]  # below a 120 s agent shell
    assert os.getsid(doc["pid"]) == doc["pid"]  # its own session: the caller's death does not reach it

    again = dsv(env, "up", "--profile", "cpu-tiny", "--detach", "--json")  # one run at a time
    assert again.returncode == 3 and json.loads(again.stdout)["command"].startswith("dsv4setup wait")

    running = dsv(env, "wait", "--timeout", "0", "--json")
    assert running.returncode == 12, running.stdout + running.stderr
    assert json.loads(running.stdout)["outcome"] == "running"
    done = dsv(env, "wait", "--timeout", "60", "--json")
    assert done.returncode == 10, done.stdout + done.stderr
    waited = json.loads(done.stdout)
    validate_document(waited)
    assert waited["outcome"] == "done" and waited["result"]["ok"] and waited["follow"] is None
    assert "beta (attempt 1)" in Path(doc["log"]).read_text()  # progress lines reach the log without a terminal


def test_wait_on_a_failed_detached_run_exits_11_and_on_nothing_exits_2(env: dict[str, str]) -> None:
    nothing = dsv(env, "wait", "--timeout", "1", "--json")
    assert nothing.returncode == 2 and "nothing to wait for" in json.loads(nothing.stdout)["message"]
    assert dsv({**env, "TEST_STEPS_FAIL": "alpha"}, "up", "--profile", "cpu-tiny", "--detach").returncode == 0
    failed = dsv(env, "wait", "--timeout", "60", "--json")
    assert failed.returncode == 11, failed.stdout + failed.stderr
    doc = json.loads(failed.stdout)
    assert doc["outcome"] == "failed" and doc["result"]["failed_step"] == "alpha"
    assert [r["status"] for r in doc["status"]["steps"]][:2] == ["failed", "pending"]


def test_a_detached_run_that_cannot_start_is_failed_with_its_error(env: dict[str, str]) -> None:
    assert dsv(env, "up", "--profile", "no-such-profile", "--detach").returncode == 0  # judged by the run itself
    failed = dsv(env, "wait", "--timeout", "60", "--json")
    doc = json.loads(failed.stdout)
    validate_document(doc)
    assert failed.returncode == 11 and doc["result"]["schema"] == "dsv4setup.error/2"
    assert "no-such-profile" in doc["result"]["message"]


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: a process writing to its write end blocks until the read end is drained."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    return read_end, write_end


def _blocked_on_a_pipe(pid: int) -> bool:
    return Path(f"/proc/{pid}/wchan").read_text().endswith("pipe_write")


def test_two_concurrent_detached_ups_one_runs_the_other_is_refused_before_it_touches_anything(
        env: dict[str, str]) -> None:
    """Issue 24: two `up --detach` at once both passed the holder check (the lock was taken only by the
    detached run, a second later) and the second overwrote up-result.json. Both real CLIs are lined up at
    their first write to stderr (their header, before any check), then let go together: exactly one
    starts a run, the other exits 3 naming the holder, and the run's record and result stay its own."""
    slow = {**env, "TEST_STEPS_SLOW": "beta", "TEST_STEPS_SLEEP": "3"}
    read_end, write_end = _full_pipe()
    argv = [sys.executable, "-m", "dsv4setup", "up", "--profile", "cpu-tiny", "--detach", "--json"]
    ups = [subprocess.Popen(argv, env=slow, stdout=subprocess.PIPE, stderr=write_end, stdin=subprocess.DEVNULL,
                            text=True) for _ in range(2)]
    os.close(write_end)
    try:
        deadline = time.monotonic() + 120
        while not all(_blocked_on_a_pipe(up.pid) for up in ups):
            assert all(up.poll() is None for up in ups) and time.monotonic() < deadline, "never reached stderr"
            time.sleep(0.05)
        with os.fdopen(read_end, "rb") as stderr:  # let both go at once; read all they print
            stderr.read()
        outputs = [up.communicate(timeout=120)[0] for up in ups]
    finally:
        for up in ups:
            up.kill()
    assert sorted(up.returncode for up in ups) == [0, 3], outputs
    winner = [up.returncode for up in ups].index(0)
    started, refused = json.loads(outputs[winner]), json.loads(outputs[1 - winner])
    validate_document(started)
    validate_document(refused)
    assert refused["reference"] == "workdir-locked" and refused["command"].startswith("dsv4setup wait")
    holder = refused["message"]  # the winner, or the run it started (it records the run's pid once started)
    assert f"(pid {ups[winner].pid}, up --detach" in holder or f"(pid {started['pid']}, up" in holder, holder
    workdir = Path(env["DSV4SETUP_WORKDIR"])
    assert json.loads((workdir / "run" / "up-detached.json").read_text())["pid"] == started["pid"]
    done = dsv(env, "wait", "--timeout", "60", "--json")
    assert done.returncode == 10, done.stdout + done.stderr
    waited = json.loads(done.stdout)
    assert waited["pid"] == started["pid"] and waited["result"]["ok"]
    assert ts.journal(Path(env["TEST_STEPS_DIR"])) == list(ts.NAMES)  # one run: every step once
    assert (workdir / "logs" / "up.log").read_text().count("detached: ") == 1


def test_cli_up_sequential_passes_through_detach_and_wait_reads_both_engines_alike(
        env: dict[str, str]) -> None:
    """`up --sequential --detach`: the detached run is sequential too (build waits for fetch in vain); then the
    concurrent run of the same steps, detached, ends done: `wait` exits 11 and 10 as it always has."""
    env = {**env, "DSV4SETUP_RUNBOOK": "tests.core.steps_for_tests:branch_steps", "TEST_STEPS_MEET": "build,fetch"}
    one_by_one = {**env, "TEST_STEPS_WAIT_S": "0.5"}
    assert dsv(one_by_one, "up", "--profile", "cpu-tiny", "--sequential", "--detach", "--json").returncode == 0
    failed = dsv(env, "wait", "--timeout", "60", "--json")
    doc = json.loads(failed.stdout)
    assert failed.returncode == 11 and doc["result"]["failed_step"] == "build", failed.stdout + failed.stderr
    assert "fetch never ran beside it" in doc["result"]["error"]["message"]
    assert dsv(env, "up", "--profile", "cpu-tiny", "--detach", "--json").returncode == 0
    done = dsv(env, "wait", "--timeout", "60", "--json")
    assert done.returncode == 10, done.stdout + done.stderr
    assert json.loads(done.stdout)["status"]["running"] == []
