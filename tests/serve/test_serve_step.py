"""The serve step through the real engine, with a fake server process in place of vLLM.

Only the rendered command line is replaced (render_command -> the fake server's argv): the
engine, state, records, readiness, refusal, adoption and stop are the real code.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import psutil
import pytest

import dsv4setup.serve.launch as launch_module
from dsv4setup.core.state import StepStatus, load_state, save_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, RunContext, Selection
from dsv4setup.profiles.model import ModelSpec, Profile, ServeSpec
from dsv4setup.serve.apikey import api_key_file
from dsv4setup.serve.manager import down, server_state
from dsv4setup.serve.process import read_record, start_server, write_record
from dsv4setup.serve.step import ServeStep

from .conftest import fake_argv, processes_with_id, validate

ENV = {"PROFILE_ENV": "1"}


def _profile(port: int, **serve: object) -> Profile:
    return Profile(name="fake", description="fake server", source="tests", model=ModelSpec(local_path="/m"),
                   serve=ServeSpec(port=port, ready_timeout_s=20, stall_timeout_s=10, **serve))


@pytest.fixture
def fake_render(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """render_command -> the fake server (mode per test) on the profile's port."""
    spec = {"extra": ["--delay", "0.5"], "mode": ["ready"]}

    def render(ctx, profile: Profile) -> tuple[list[str], dict[str, str]]:
        return fake_argv(spec["mode"][0], profile.serve.port, *spec["extra"]), dict(ENV)

    monkeypatch.setattr(launch_module, "render_command", render)
    return spec


def _up(workdir: Workdir, profile: Profile, **options: object):
    return Runbook([ServeStep()], workdir, profile, dict(options)).up(Selection())


def _track(workdir: Workdir, reaper) -> None:
    record = read_record(workdir)
    if record is not None:
        reaper.append(record)


def test_serve_records_verifies_skips_refuses_a_second_and_down_cleans_with_fake_server_process(
        workdir: Workdir, port: int, fake_render, reaper) -> None:
    result = _up(workdir, _profile(port))
    _track(workdir, reaper)
    assert result.ok, result.error
    out = load_state(workdir.state_file).steps["serve"].outputs
    assert out["port"] == port and out["host"] == "127.0.0.1" and out["base_url"] == f"http://127.0.0.1:{port}"
    assert out["auth"] is False and out["log"] == str(workdir.log_file("serve"))
    record = read_record(workdir)
    assert record.pid == out["pid"] and psutil.pid_exists(record.pid)
    log = workdir.log_file("serve").read_text()
    assert "----- vLLM output follows -----" in log and "Application startup complete" in log

    again = _up(workdir, _profile(port))
    assert again.ok and again.decisions[0].action == "skip" and "verified" in again.decisions[0].reason

    doc = down(workdir, grace_s=5)
    validate(doc, "down")
    assert doc["was_running"] and record.pid in doc["pids"] and not doc["forced"]
    assert processes_with_id(record.serve_id) == [] and read_record(workdir) is None
    nothing = down(workdir)
    validate(nothing, "down")
    assert nothing["was_running"] is False and "no server" in nothing["message"]

    drift = _up(workdir, _profile(port))  # the machine, not the state file: it runs again
    _track(workdir, reaper)
    assert drift.ok and drift.decisions[0].action == "run" and "drift" in drift.decisions[0].reason
    running = read_record(workdir)

    moved = RunContext(workdir, _profile(port + 1), load_state(workdir.state_file))
    assert "another command line" in ServeStep().is_done(moved).summary  # healthy, but not the planned server
    other = _up(workdir, _profile(port + 1))  # the plan changed (port): the step runs again
    assert other.ok and other.decisions[0].action == "run"
    replaced = read_record(workdir)  # our own server was replaced: never two for one workdir
    _track(workdir, reaper)
    assert replaced is not None and replaced.pid != running.pid and replaced.port == port + 1
    assert not psutil.pid_exists(running.pid) or psutil.Process(running.pid).status() == psutil.STATUS_ZOMBIE
    assert server_state(workdir).healthy and processes_with_id(running.serve_id) == []
    down(workdir, grace_s=5)


def test_known_failure_is_recorded_in_the_state_and_the_server_stopped_with_fake_server_process(
        workdir: Workdir, port: int, fake_render, reaper) -> None:
    fake_render["mode"] = ["signature"]
    fake_render["extra"] = ["--line", "ValueError: MTP speculative decoding layer 43 weights missing from checkpoint."]
    result = _up(workdir, _profile(port))
    assert not result.ok
    error = load_state(workdir.state_file).steps["serve"].error
    assert error.known_failure == "mtp-weights-missing" and "no MTP tensors" in error.message
    assert "MTP checkpoint" in error.fix or "MTP layer" in error.fix
    assert read_record(workdir) is None  # stopped and cleaned
    assert "stopped the server" in workdir.log_file("serve").read_text()
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(port) in (p.info["cmdline"] or [])
                and "--mode" in (p.info["cmdline"] or [])]


def test_a_server_left_starting_by_an_interrupted_up_is_adopted_with_fake_server_process(
        workdir: Workdir, port: int, fake_render, reaper) -> None:
    argv = fake_argv("ready", port, "--delay", "0.5")
    log = workdir.log_file("serve")
    record, _proc = start_server(argv, ENV, host="127.0.0.1", port=port, log_path=log, cwd=workdir.root)
    reaper.append(record)
    write_record(workdir, record)
    state = load_state(workdir.state_file)
    state.step("serve").status, state.step("serve").pid = StepStatus.RUNNING, 999_999_999  # its `up` was killed
    save_state(workdir.state_file, state)
    result = _up(workdir, _profile(port))
    assert result.ok and "interrupted" in result.decisions[0].reason
    assert load_state(workdir.state_file).steps["serve"].outputs["pid"] == record.pid  # adopted, not restarted
    assert len(processes_with_id(record.serve_id)) == 1
    down(workdir, grace_s=5)


def test_a_dead_servers_record_is_cleared_and_a_new_one_started_with_fake_server_process(
        workdir: Workdir, port: int, fake_render, reaper) -> None:
    record, proc = start_server(fake_argv("exit", port), ENV, host="127.0.0.1", port=port,
                                log_path=workdir.log_file("serve"), cwd=workdir.root)
    write_record(workdir, record)
    proc.wait()
    result = _up(workdir, _profile(port))
    _track(workdir, reaper)
    assert result.ok
    assert read_record(workdir).pid != record.pid and not Path(record.tmpdir).exists()
    assert "cleared the record of a server that is gone" in workdir.log_file("serve").read_text()
    down(workdir, grace_s=5)


def test_another_address_requires_a_key_passed_by_env_only_with_fake_server_process(
        workdir: Workdir, port: int, fake_render, reaper, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSV4SETUP_API_KEY", raising=False)
    result = _up(workdir, _profile(port), host="0.0.0.0")
    _track(workdir, reaper)
    assert result.ok, result.error
    key = api_key_file(workdir).read_text().strip()
    assert stat.S_IMODE(api_key_file(workdir).stat().st_mode) == 0o600
    out = load_state(workdir.state_file).steps["serve"].outputs
    assert out["host"] == "0.0.0.0" and out["auth"] is True and out["base_url"] == f"http://127.0.0.1:{port}"
    server = psutil.Process(read_record(workdir).pid)
    assert server.environ()["VLLM_API_KEY"] == key and key not in " ".join(server.cmdline())
    for path in (workdir.state_file, workdir.log_file("serve"), workdir.run_dir / "serve.json"):
        assert key not in path.read_text(), path
    assert "VLLM_API_KEY=<set>" in workdir.log_file("serve").read_text()
    assert json.loads((workdir.run_dir / "serve.json").read_text())["host"] == "0.0.0.0"
    down(workdir, grace_s=5)
