"""The server manager against real subprocesses (a fake server script where vLLM cannot misbehave on demand)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from dsv4setup.core.errors import StepError
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.process import (
    RAY_RECORD,
    ServerRecord,
    check_port_free,
    is_ours,
    read_record,
    remember_segments,
    start_server,
    stop_orphans,
    stop_server,
    write_record,
)
from dsv4setup.serve.readiness import LogFollower, ReadyLimits, ServerWatch, wait_ready

from .conftest import fake_argv, processes_with_id

FAST = ReadyLimits(ready_timeout_s=20, stall_timeout_s=20, poll_s=0.1, heartbeat_s=1, health_timeout_s=0.5)


def _start(workdir: Workdir, reaper: list[ServerRecord], argv: list[str], port: int):
    log = workdir.log_file("serve")
    log.write_text("===== header written by the step\n")
    record, proc = start_server(argv, {"PROFILE_ENV": "1"}, host="127.0.0.1", port=port, log_path=log,
                                cwd=workdir.root)
    reaper.append(record)
    write_record(workdir, record)
    return record, proc


def _wait(record: ServerRecord, proc, limits: ReadyLimits = FAST) -> tuple[float, list[str]]:
    messages: list[str] = []
    seconds = wait_ready(ServerWatch(proc.pid, proc.poll), record.host, record.port,
                         LogFollower(Path(record.log), record.log_offset), limits, messages.append)
    return seconds, messages


def test_ready_server_is_ours_and_stops_with_its_whole_group_with_fake_server_process(
        workdir: Workdir, reaper, port: int) -> None:
    record, proc = _start(workdir, reaper, fake_argv("ready", port, "--delay", "1", "--child"), port)
    seconds, messages = _wait(record, proc)
    assert seconds >= 0.9
    assert any("application startup complete" in m for m in messages) and messages[-1].startswith("ready")
    assert is_ours(record) == (True, f"pid {record.pid} is our server on port {port}")
    assert read_record(workdir) == record and workdir.serve_pid_file.read_text() == f"{record.pid}\n"
    tree = processes_with_id(record.serve_id)
    assert len(tree) == 2  # the server and its grandchild (like vLLM's engine core)
    assert Path(record.tmpdir).is_dir()
    report = stop_server(workdir, record, grace_s=5)
    assert report.was_running and not report.forced and report.survivors == []
    assert report.pids == sorted(p.pid for p in tree)
    assert processes_with_id(record.serve_id) == []
    assert not Path(record.tmpdir).exists() and report.removed == [record.tmpdir]
    assert read_record(workdir) is None and not workdir.serve_pid_file.exists()
    assert is_ours(record)[0] is False


def test_stall_is_reported_as_a_probable_hang_with_p2p_advice_with_fake_server_process(
        workdir: Workdir, reaper, port: int) -> None:
    record, proc = _start(workdir, reaper, fake_argv("stall", port), port)
    limits = ReadyLimits(ready_timeout_s=30, stall_timeout_s=1.5, poll_s=0.1, heartbeat_s=0.3, health_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(StepError) as exc:
        _wait(record, proc, limits)
    assert 1.4 <= time.monotonic() - started < 10
    assert exc.value.known_failure == "serve-stall"
    assert "probably hung" in exc.value.message and "loading weights" in exc.value.message
    assert "NCCL_P2P_DISABLE=1" in exc.value.fix and "--disable-custom-all-reduce" in exc.value.fix
    stop_server(workdir, record, grace_s=5)
    assert processes_with_id(record.serve_id) == []


def test_heartbeats_written_to_the_same_log_do_not_hide_a_stall_with_fake_server_process(
        workdir: Workdir, reaper, port: int) -> None:
    record, proc = _start(workdir, reaper, fake_argv("stall", port), port)
    log = Path(record.log)

    def progress(message: str) -> None:  # what ctx.progress does: a "-- " line in the step log
        with log.open("a") as fh:
            fh.write(f"-- {message}\n")

    limits = ReadyLimits(ready_timeout_s=30, stall_timeout_s=1.5, poll_s=0.1, heartbeat_s=0.2, health_timeout_s=0.2)
    with pytest.raises(StepError, match="probably hung"):
        wait_ready(ServerWatch(proc.pid, proc.poll), "127.0.0.1", port, LogFollower(log, record.log_offset),
                   limits, progress)
    assert log.read_text().count("-- loading weights") >= 3
    stop_server(workdir, record, grace_s=5)


def test_known_signature_in_the_log_is_reported_with_cause_and_fix_with_fake_server_process(
        workdir: Workdir, reaper, port: int) -> None:
    line = "Failed: Cuda error /workspace/csrc/custom_all_reduce.cuh:455 'invalid argument'"
    record, proc = _start(workdir, reaper, fake_argv("signature", port, "--line", line), port)
    with pytest.raises(StepError) as exc:
        _wait(record, proc)
    assert exc.value.known_failure == "custom-allreduce-invalid-argument"
    assert "custom all-reduce" in exc.value.message and "custom_all_reduce.cuh:455" in exc.value.message
    assert "--disable-custom-all-reduce" in exc.value.fix
    assert proc.poll() is None  # still running: the caller (the step) stops it
    stop_server(workdir, record, grace_s=5)


def test_process_exit_during_startup_with_fake_server_process(workdir: Workdir, reaper, port: int) -> None:
    record, proc = _start(workdir, reaper, fake_argv("exit", port), port)
    with pytest.raises(StepError) as exc:
        _wait(record, proc)
    assert "exited with code 3" in exc.value.message and exc.value.known_failure is None
    assert exc.value.message.endswith(": RuntimeError: something broke")
    assert "logs serve" in exc.value.fix
    report = stop_server(workdir, record, grace_s=5)  # what the step does: nothing runs, the leftovers go
    assert not report.was_running and report.removed == [record.tmpdir] and read_record(workdir) is None


def test_health_503_means_the_engine_died_with_fake_server_process(workdir: Workdir, reaper, port: int) -> None:
    record, proc = _start(workdir, reaper, fake_argv("dead", port, "--delay", "0"), port)
    with pytest.raises(StepError) as exc:
        _wait(record, proc)
    assert exc.value.known_failure == "engine-dead" and "503" in exc.value.message
    stop_server(workdir, record, grace_s=5)


def test_ready_timeout_with_fake_server_process(workdir: Workdir, reaper, port: int) -> None:
    record, proc = _start(workdir, reaper, fake_argv("ready", port, "--delay", "30"), port)
    limits = ReadyLimits(ready_timeout_s=1.5, stall_timeout_s=30, poll_s=0.1, heartbeat_s=1, health_timeout_s=0.2)
    with pytest.raises(StepError) as exc:
        _wait(record, proc, limits)
    assert exc.value.known_failure == "serve-ready-timeout" and "ready_timeout_s" in exc.value.fix
    stop_server(workdir, record, grace_s=5)


def test_sigkill_after_the_grace_period_with_fake_server_process(workdir: Workdir, reaper, port: int) -> None:
    record, proc = _start(workdir, reaper, fake_argv("stubborn", port), port)
    time.sleep(0.5)  # let it install its SIGTERM handler
    report = stop_server(workdir, record, grace_s=1)
    assert report.forced and report.survivors == [] and proc.poll() is not None
    assert processes_with_id(record.serve_id) == []


def test_a_reused_pid_is_not_ours(workdir: Workdir, reaper, port: int) -> None:
    record, proc = _start(workdir, reaper, fake_argv("stall", port), port)
    assert is_ours(record)[0]
    other = ServerRecord(**{**record.__dict__, "create_time": record.create_time - 100})
    assert is_ours(other) == (False, f"server pid {record.pid} is not running")
    wrong_cmd = ServerRecord(**{**record.__dict__, "argv": [*record.argv, "--extra"]})
    assert is_ours(wrong_cmd)[0] is False and "not our server" in is_ours(wrong_cmd)[1]
    stop_server(workdir, record, grace_s=5)


def test_port_in_use_is_a_clear_error_naming_the_holder(port: int) -> None:
    check_port_free("127.0.0.1", port)  # free: no error
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(StepError) as exc:
            check_port_free("127.0.0.1", port)
    assert f"port {port} on 127.0.0.1 is already in use" in exc.value.message
    assert "pid" in exc.value.message and "serve.port" in exc.value.fix


def test_an_address_of_another_machine_cannot_be_bound(port: int) -> None:
    with pytest.raises(StepError, match="not an address of this machine"):
        check_port_free("203.0.113.7", port)


def test_a_missing_interpreter_is_a_step_error(workdir: Workdir, port: int) -> None:
    with pytest.raises(StepError, match="cannot start the server") as exc:
        start_server(["/nonexistent/venv/bin/python", "-m", "x"], {}, host="127.0.0.1", port=port,
                     log_path=workdir.log_file("serve"), cwd=workdir.root)
    assert "--redo vllm" in exc.value.fix


def test_a_server_no_record_knows_is_stopped_as_an_orphan_with_fake_server_process(
        workdir: Workdir, reaper, port: int) -> None:
    """What a run killed between starting the server and recording it leaves behind."""
    log = workdir.log_file("serve")
    record, proc = start_server(fake_argv("ready", port, "--child"), {}, host="127.0.0.1", port=port, log_path=log,
                                cwd=workdir.root)
    reaper.append(record)
    deadline = time.monotonic() + 20
    while len(processes_with_id(record.serve_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stop_orphans(workdir, record.serve_id) == [] and len(processes_with_id(record.serve_id)) == 2  # known
    assert stop_orphans(workdir, None, grace_s=5) == []
    assert processes_with_id(record.serve_id) == []
    proc.wait(timeout=10)


SHM_HOLDER = """
import mmap, os, sys, time
for path in sys.argv[1:]:
    with open(path, "wb") as fh:
        fh.write(bytes(4096))
    fd = os.open(path, os.O_RDWR)
    globals()[path] = mmap.mmap(fd, 4096)  # kept mapped, as torch keeps its psm_* segments
print("mapped", flush=True)
time.sleep(600)
"""


def _mapping(workdir: Workdir, reaper: list[ServerRecord], segments: list[str], name: str) -> ServerRecord:
    log = workdir.log_file(name)
    record, _proc = start_server([sys.executable, "-c", SHM_HOLDER, *segments], {}, host="127.0.0.1", port=1,
                                 log_path=log, cwd=workdir.root)
    reaper.append(record)
    write_record(workdir, record, name)
    deadline = time.monotonic() + 20
    while "mapped" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return record


def test_stop_removes_the_shared_memory_segments_its_processes_and_ranks_mapped_and_no_other(
        workdir: Workdir, reaper: list[ServerRecord]) -> None:
    """The server's own segments, and those of its vLLM ranks in this node's Ray (multi-node: Ray ends the
    ranks itself once the server is gone, so their segments are read before the server stops)."""
    tag = f"{time.time_ns()}"
    ours = [f"/dev/shm/psm_dsv4test{tag}", f"/dev/shm/dsv4test{tag}-tp:0-[0-1]-cpushm_0"]
    rank = f"/dev/shm/dsv4test{tag}-tp:0-[0-1]-cpushm_1"
    other = Path(f"/dev/shm/psm_dsv4other{tag}")  # not mapped by the server: never touched
    other.write_bytes(b"x")
    try:
        ray = _mapping(workdir, reaper, [rank], RAY_RECORD)
        record = _mapping(workdir, reaper, ours, "serve")
        assert stop_orphans(workdir, record.serve_id) == [] and processes_with_id(ray.serve_id)  # recorded: kept
        report = stop_server(workdir, record, grace_s=5)
        assert sorted(s for s in report.removed if s.startswith("/dev/shm/")) == sorted([*ours, rank])
        assert not any(Path(s).exists() for s in [*ours, rank]) and other.exists()
        assert stop_server(workdir, ray, grace_s=5, name=RAY_RECORD).was_running
    finally:
        other.unlink(missing_ok=True)
        for s in [*ours, rank]:
            Path(s).unlink(missing_ok=True)


def test_segments_recorded_once_ready_are_removed_even_after_the_server_died_on_its_own(
        workdir: Workdir, reaper: list[ServerRecord]) -> None:
    """Multi-node: a rank on another node dies and takes the server down; `down` still removes its segments."""
    segment = f"/dev/shm/psm_dsv4test{time.time_ns()}"
    try:
        record = remember_segments(workdir, _mapping(workdir, reaper, [segment], "serve"))
        assert record.segments == [segment] and (read_record(workdir) or record).segments == [segment]
        os.killpg(record.pgid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while processes_with_id(record.serve_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        report = stop_server(workdir, record, grace_s=5)
        assert not report.was_running and segment in report.removed and not Path(segment).exists()
    finally:
        Path(segment).unlink(missing_ok=True)
