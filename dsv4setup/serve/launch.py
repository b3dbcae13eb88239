"""Start the vLLM server for a run context's plan: render argv and env, adopt or replace our own
running server, start detached, wait until ready (the serve step's work; the bench calls it too)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dsv4setup.core.errors import DsvError, StepError
from dsv4setup.engine import RunContext
from dsv4setup.profiles.model import Profile
from dsv4setup.serve.apikey import USER_KEY_ENV, api_key_file, server_api_key
from dsv4setup.serve.command import render_serve
from dsv4setup.serve.manager import server_state
from dsv4setup.serve.process import (
    ServerRecord,
    check_port_free,
    command_fingerprint,
    is_ours,
    read_record,
    remember_segments,
    start_server,
    stop_orphans,
    stop_server,
    write_record,
)
from dsv4setup.serve.readiness import LogFollower, ReadyLimits, ServerWatch, base_url, wait_ready
from dsv4setup.service.systemd import InstalledUnit, journal_command, read_installed, systemctl


def effective_profile(ctx: RunContext) -> Profile:
    """The profile with `--host` applied: another address than the profile's only when asked explicitly."""
    host = ctx.options.get("host")
    if not host or host == ctx.profile.serve.host:
        return ctx.profile
    return ctx.profile.model_copy(update={"serve": ctx.profile.serve.model_copy(update={"host": host})})


def render_command(ctx: RunContext, profile: Profile) -> tuple[list[str], dict[str, str]]:
    command = render_serve(profile, ctx.workdir, ctx.state)
    return [str(a) for a in command.argv], dict(command.env)


def server_command(ctx: RunContext) -> tuple[Profile, list[str], dict[str, str], str | None]:
    """The profile (with --host), argv and env the server runs with, the API key included in env."""
    profile = effective_profile(ctx)
    argv, env = render_command(ctx, profile)
    key = server_api_key(ctx.workdir, profile.serve.host)
    if key:
        env["VLLM_API_KEY"] = key
    return profile, argv, env, key


def launch(ctx: RunContext) -> dict[str, Any]:
    """Start the server for ctx's plan (or adopt the one already starting) and wait until it is ready."""
    profile, argv, env, key = server_command(ctx)
    host, port = profile.serve.host, profile.serve.port
    log = ctx.require_log()
    unit = read_installed(ctx.workdir)
    if unit is not None and unit.command_fingerprint == command_fingerprint(argv, env):
        return _through_systemd(ctx, unit, profile, key)
    record = _adoptable(ctx, command_fingerprint(argv, env))
    survivors = stop_orphans(ctx.workdir, record.serve_id if record else None)
    if survivors:
        raise StepError(f"servers started here by an interrupted run would not stop (pids {survivors})",
                        fix=f"stop them, then run `dsv4setup up --workdir {ctx.workdir.root}` again")
    if record is not None:
        ctx.progress(f"a server with this command line is already starting (pid {record.pid}): waiting for it")
        watch = ServerWatch(record.pid)
    else:
        check_port_free(host, port)
        if not Path(argv[0]).exists():
            raise StepError(f"the serving interpreter {argv[0]} does not exist",
                            fix="install vLLM first: `dsv4setup up --until vllm`")
        log.line("$ " + " ".join(argv))
        log.line("env: " + " ".join(f"{k}={v}" for k, v in env.items() if k != "VLLM_API_KEY")
                 + (" VLLM_API_KEY=<set>" if key else ""))
        log.line("----- vLLM output follows -----")
        record, proc = start_server(argv, env, host=host, port=port, log_path=log.path, cwd=ctx.workdir.root)
        write_record(ctx.workdir, record)
        watch = ServerWatch(proc.pid, proc.poll)
    limits = ReadyLimits(profile.serve.ready_timeout_s, profile.serve.stall_timeout_s)
    try:
        ready_s = wait_ready(watch, host, port, LogFollower(Path(record.log), record.log_offset), limits,
                             ctx.progress)
    except (StepError, KeyboardInterrupt):
        report = stop_server(ctx.workdir, record)
        log.line(f"stopped the server (pids {report.pids}, {report.elapsed_s}s"
                 + (", SIGKILL needed)" if report.forced else ")"))
        raise
    record = remember_segments(ctx.workdir, record)
    return {"pid": record.pid, "host": host, "port": port, "base_url": base_url(host, port),
            "log": record.log, "started_at": record.started_at, "ready_s": round(ready_s, 1),
            "served_model_name": profile.serve.served_model_name, "auth": key is not None,
            "api_key_source": _key_source(ctx, key)}


def _through_systemd(ctx: RunContext, unit: InstalledUnit, profile: Profile, key: str | None) -> dict[str, Any]:
    """The installed unit runs this very command line: start it (systemctl returns once /health is 200)."""
    ctx.progress(f"starting {unit.name} with systemctl (it counts as started once /health answers)")
    started = time.monotonic()
    try:
        systemctl(unit, "start", unit.name, timeout_s=profile.serve.ready_timeout_s + 120)
    except DsvError as exc:
        raise StepError(exc.message, fix=f"{exc.fix}; the server's own output: `dsv4setup logs serve -n 60`"
                        ) from None
    state = server_state(ctx.workdir)
    if not state.healthy or state.record is None:
        raise StepError(f"{unit.name} started but the server is not healthy: {state.detail}",
                        fix=f"see `{journal_command(unit)}` and `dsv4setup logs serve -n 60`")
    record = state.record
    return {"pid": record.pid, "host": record.host, "port": record.port,
            "base_url": base_url(record.host, record.port), "log": record.log, "started_at": record.started_at,
            "ready_s": round(time.monotonic() - started, 1), "served_model_name": profile.serve.served_model_name,
            "auth": key is not None, "api_key_source": _key_source(ctx, key)}


def _adoptable(ctx: RunContext, fingerprint: str) -> ServerRecord | None:
    """The recorded server when it is ours with the same command line; refuse a second, clear a dead one."""
    existing = read_record(ctx.workdir)
    if existing is None:
        return None
    ours, detail = is_ours(existing)
    if ours and existing.command_fingerprint == fingerprint:
        return existing
    if ours:  # the plan changed (profile, overrides, k): replace our own server, never run two
        ctx.progress(f"stopping the running server (pid {existing.pid}): its command line differs from the plan")
        report = stop_server(ctx.workdir, existing)
        ctx.require_log().line(f"replaced the server pid {existing.pid} (stopped {report.pids}, "
                               f"{report.elapsed_s}s)")
        if report.survivors:
            raise StepError(f"the old server did not stop (pids {report.survivors} survive)",
                            fix=f"stop them, then run `dsv4setup up --workdir {ctx.workdir.root}` again")
        return None
    report = stop_server(ctx.workdir, existing)  # stragglers of a dead server, its temp dir, its records
    ctx.require_log().line(f"cleared the record of a server that is gone ({detail}); "
                           f"stopped leftovers: {report.pids or 'none'}")
    return None


def _key_source(ctx: RunContext, key: str | None) -> str | None:
    if key is None:
        return None
    return f"env {USER_KEY_ENV}" if os.environ.get(USER_KEY_ENV) else str(api_key_file(ctx.workdir))
