"""`service install|status|remove`: the `dsv4setup.service/1` documents.

Install renders the plan's exact serve command (as `dsv4setup plan` shows it) into a unit. With
--user it hands the running server over: a server started by `up` is stopped first, then the
unit is enabled and started (systemctl returns once /health answers). With --system nothing is
run as root: the unit is written into <workdir>/run/ and the root commands are returned.
Remove stops and deletes the unit; the deployment (venv, model, state, logs) stays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4setup.core.errors import DsvError
from dsv4setup.core.fsutil import atomic_write_text
from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.preflight.snapshot import take_snapshot
from dsv4setup.profiles.resolve import resolve_profile
from dsv4setup.serve.apikey import server_api_key
from dsv4setup.serve.command import render_serve
from dsv4setup.serve.manager import server_state
from dsv4setup.serve.process import command_fingerprint, read_record, stop_server
from dsv4setup.serve.readiness import base_url
from dsv4setup.service.systemd import (
    InstalledUnit,
    Scope,
    as_int,
    current_user,
    journal_command,
    linger_enabled,
    read_installed,
    read_recorded,
    record_path,
    require_user_manager,
    systemctl,
    unit_name,
    unit_state,
    user_unit_dir,
    write_installed,
)
from dsv4setup.service.unit import UnitSpec, render_unit

SERVICE_SCHEMA = "dsv4setup.service/1"
KEY_ENV_FILE = "service.env"


def _key_file(workdir: Workdir, key: str | None) -> Path | None:
    """The 0600 EnvironmentFile with the API key (removed when the server needs none)."""
    path = workdir.secrets_dir / KEY_ENV_FILE
    if key is None:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    atomic_write_text(path, f"VLLM_API_KEY={key}\n", mode=0o600)
    return path


def _root_commands(unit: InstalledUnit, workdir: Workdir, action: str) -> list[str]:
    target = f"/etc/systemd/system/{unit.name}"
    if action == "install":
        return [f"dsv4setup down --workdir {workdir.root}  # as {current_user()}: the server started by `up`",
                f"install -m 0644 {unit.unit_file} {target}", "systemctl daemon-reload",
                f"systemctl enable --now {unit.name}"]
    return [f"systemctl disable --now {unit.name}", f"rm {target}", "systemctl daemon-reload"]


def _linger(scope: Scope) -> dict[str, Any] | None:
    if scope != "user":
        return None
    user = current_user()
    enabled = linger_enabled(user)
    return {"user": user, "enabled": enabled, "command": None if enabled else f"loginctl enable-linger {user}",
            "note": "the unit starts at boot" if enabled else
                    "lingering is off: the unit starts at your login and stops at your logout, not at boot; "
                    f"as root run `loginctl enable-linger {user}` to start it at boot"}


def _doc(workdir: Workdir, action: str, unit: InstalledUnit | None, *, installed: bool,
         message: str, root_commands: list[str] | None = None) -> dict[str, Any]:
    state = unit_state(unit) if unit is not None and installed else None
    server = server_state(workdir)
    rec = server.record
    pid = rec.pid if rec and server.ours else None
    return {"schema": SERVICE_SCHEMA, "ok": True, "action": action, "workdir": str(workdir.root),
            "scope": unit.scope if unit else None, "unit": unit.name if unit else None,
            "unit_file": unit.unit_file if unit else None, "installed": installed,
            "state": None if state is None else {
                "load": state["LoadState"], "active": state["ActiveState"], "sub": state["SubState"],
                "enabled": state["UnitFileState"], "main_pid": as_int(state["MainPID"]) or None,
                "restarts": as_int(state["NRestarts"]),
                "result": state["Result"]},
            "linger": _linger(unit.scope) if unit else None,
            "server": {"running": server.ours, "healthy": server.healthy, "pid": pid,
                       "base_url": base_url(rec.host, rec.port) if rec else None,
                       "managed_by_unit": bool(rec and rec.unit)},
            "journal": journal_command(unit) if unit else None,
            "root_commands": root_commands or [], "message": message}


def install(workdir: Workdir, profile: str | None, sets: list[str], scope: Scope) -> dict[str, Any]:
    resolved = resolve_profile(workdir, profile, sets, probe=take_snapshot)
    prof = resolved.profile
    if prof.multinode is not None:
        raise DsvError("a multi-node deployment cannot run as one systemd unit (it needs a Ray cluster first)",
                       fix="run `dsv4setup plan` for the per-node commands")
    command = render_serve(prof, workdir, load_state(workdir.state_file))
    argv = [str(a) for a in command.argv]
    if not Path(argv[0]).exists():
        raise DsvError(f"the serving interpreter {argv[0]} does not exist: nothing to run yet",
                       fix=f"set the deployment up first: `dsv4setup up --workdir {workdir.root}`")
    key = server_api_key(workdir, prof.serve.host)
    return install_command(workdir, scope, ServedCommand(argv, dict(command.env), prof.serve.host, prof.serve.port,
                                                         prof.serve.ready_timeout_s, key, f"profile {prof.name}"))


@dataclass(frozen=True)
class ServedCommand:
    """What the unit runs: the plan's argv and env, where it listens, how long it may take to be ready."""

    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    ready_timeout_s: float
    api_key: str | None
    what: str


def install_command(workdir: Workdir, scope: Scope, command: ServedCommand) -> dict[str, Any]:
    """Write the unit of `command`; --user: hand the running server over to it and start it."""
    name = unit_name(workdir)
    if scope == "user":
        require_user_manager()
    path = (user_unit_dir() if scope == "user" else workdir.run_dir) / name
    spec = UnitSpec(scope=scope, workdir=workdir.root, argv=command.argv, env=command.env, host=command.host,
                    port=command.port, ready_timeout_s=command.ready_timeout_s,
                    key_file=_key_file(workdir, command.api_key), user=current_user() if scope == "system" else None,
                    description=f"vLLM server, {command.what}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_unit(spec), mode=0o644)
    unit = InstalledUnit(scope=scope, name=name, unit_file=str(path),
                         command_fingerprint=command_fingerprint(command.argv, command.env), host=command.host,
                         port=command.port)
    write_installed(workdir, unit)
    if scope == "system":
        return _doc(workdir, "install", unit, installed=read_installed(workdir) is not None,
                    message=f"wrote {path}; run the root commands to install and start it (dsv4setup never uses sudo)",
                    root_commands=_root_commands(unit, workdir, "install"))
    systemctl(unit, "daemon-reload")
    record = read_record(workdir)
    if record is not None and not record.unit:  # hand-over: the server `up` started goes; never two servers
        stop_server(workdir, record)
    systemctl(unit, "enable", name)
    # restart, not start: a unit already running an older command line must take up the new one
    systemctl(unit, "restart", name, timeout_s=command.ready_timeout_s + 120)
    return _doc(workdir, "install", unit, installed=True,
                message=f"{name} is enabled and started; up/down/serve/bench now act through systemd")


def status(workdir: Workdir) -> dict[str, Any]:
    unit = read_installed(workdir)
    if unit is None:
        return _doc(workdir, "status", None, installed=False,
                    message="no systemd unit is installed for this workdir (`dsv4setup service install --user`)")
    state = unit_state(unit)
    return _doc(workdir, "status", unit, installed=True,
                message=f"{unit.name} ({unit.scope}): {state['ActiveState']} ({state['SubState']}), "
                        f"{state['UnitFileState'] or 'unknown'} at boot")


def remove(workdir: Workdir) -> dict[str, Any]:
    unit = read_installed(workdir)
    recorded = unit or read_recorded(workdir)
    if recorded is None:
        return _doc(workdir, "remove", None, installed=False, message="no systemd unit is installed for this workdir")
    if recorded.scope == "system" and unit is not None and os.geteuid() != 0:
        return _doc(workdir, "remove", unit, installed=True,
                    message=f"{unit.name} is a system unit: run the root commands, then `dsv4setup service remove` "
                            "again to forget it", root_commands=_root_commands(unit, workdir, "remove"))
    if unit is not None:
        systemctl(unit, "disable", "--now", unit.name, timeout_s=180)
        Path(unit.loaded_file).unlink(missing_ok=True)
        systemctl(unit, "daemon-reload")
    Path(recorded.unit_file).unlink(missing_ok=True)
    record_path(workdir).unlink(missing_ok=True)
    _key_file(workdir, None)
    return _doc(workdir, "remove", None, installed=False,
                message=f"stopped and removed {recorded.name}; the deployment is intact (`dsv4setup up` serves again)")
