"""`service install|status|remove`: the `dsv4setup.service/1` documents.

Install renders the plan's exact serve command (as `dsv4setup plan` shows it) into a unit. With
--user it hands the running server over: a server started by `up` is stopped first, then the
unit is enabled and started (systemctl returns once /health answers). With --system nothing is
run as root: the unit is written into <workdir>/run/ and the root commands are returned, every
path in them shell-quoted; root copies the unit into a file of its own, checks that copy's sha256
against the unit dsv4setup wrote and installs that copy, so nothing the user changes later reaches
/etc. A system unit runs as the invoking user (User= from the password database), never as root
unless `--allow-root` asks for it. Remove stops and deletes only the unit path it computes itself;
the deployment (venv, model, state, logs) stays.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dsv4setup.core.errors import DsvError, UsageError
from dsv4setup.core.fsutil import atomic_write_text, write_secret_file
from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.preflight.snapshot import take_snapshot
from dsv4setup.profiles.model import Profile
from dsv4setup.profiles.resolve import resolve_profile
from dsv4setup.serve.apikey import server_api_key
from dsv4setup.serve.command import render_serve
from dsv4setup.serve.manager import server_state
from dsv4setup.serve.process import command_fingerprint, read_record, stop_server
from dsv4setup.serve.readiness import base_url
from dsv4setup.service.systemd import (
    SYSTEM_UNIT_DIR,
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
    unit_path,
    unit_state,
    write_installed,
)
from dsv4setup.service.unit import UnitSpec, UnsafeUnitValue, render_unit

SERVICE_SCHEMA = "dsv4setup.service/1"
KEY_FILE = "service.key"  # the API key alone; the unit's runner reads it as the unit's user
OLD_KEY_FILE = "service.env"  # the EnvironmentFile= with the key that units read before the runner did


def _remove_own(path: Path) -> None:
    """Unlink `path` (a name we chose in a folder of ours), never through a folder that is a symlink."""
    if not path.parent.is_symlink():
        path.unlink(missing_ok=True)


def _key_file(workdir: Workdir, key: str | None) -> Path | None:
    """The 0600 file with the API key the unit's runner reads (removed when the server needs none)."""
    path = workdir.secrets_dir / KEY_FILE
    _remove_own(workdir.secrets_dir / OLD_KEY_FILE)
    if key is None:
        _remove_own(path)
        return None
    write_secret_file(path, key)
    return path


def root_install_command(source: Path, text: str, target: Path) -> str:
    """One shell line for root: copy `source` into a root-owned temp file (no symlink followed, at most the
    unit's size), check that copy's sha256 against `text`'s, and install that very copy at `target`."""
    data = text.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    copy = (f'dd {shlex.quote(f"if={source}")} of="$t" bs={len(data)} count=1 '
            "iflag=fullblock,nofollow,nonblock status=none")
    check = f"printf '%s  %s\\n' {digest} \"$t\" | sha256sum --check --quiet"
    return (f't=$(mktemp) && {{ {copy} && {check} && install -m 0644 "$t" {shlex.quote(str(target))}; '
            'r=$?; rm -f "$t"; test "$r" -eq 0; }')


def _root_commands(unit: InstalledUnit, workdir: Workdir, action: str, text: str = "") -> list[str]:
    target = SYSTEM_UNIT_DIR / unit.name
    name = shlex.quote(unit.name)
    if action == "install":
        return [f"{shlex.join(['dsv4setup', 'down', '--workdir', str(workdir.root)])}"
                f"  # as {shlex.quote(current_user())}: the server started by `up`",
                root_install_command(Path(unit.unit_file), text, target), "systemctl daemon-reload",
                f"systemctl enable --now {name}"]
    return [f"systemctl disable --now {name}", f"rm -f {shlex.quote(str(target))}", "systemctl daemon-reload"]


def root_commands_to_remove(unit: InstalledUnit, workdir: Workdir) -> list[str]:
    """What root runs to stop and delete a system unit (as `service remove` prints it)."""
    return _root_commands(unit, workdir, "remove")


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


def _profile_values(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a profile section with its key as --set names it: ("serve.extra_args[3]", "...")."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _profile_values(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _profile_values(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value


def _named(exc: UnsafeUnitValue, profile: Profile) -> UnsafeUnitValue:
    """An argv item's refusal naming the profile key it came from (serve.extra_args[3]), where one holds it."""
    if not exc.where.startswith("argv["):
        return exc
    dumped = profile.model_dump(mode="json")
    for where, value in [*_profile_values(dumped["serve"], "serve"), *_profile_values(dumped["env"], "env")]:
        if value == exc.text or (value in exc.text and any(c in value for c in "\n\r\0")):
            return exc.named(where)
    return exc


def install(workdir: Workdir, profile: str | None, sets: list[str], scope: Scope,
            allow_root: bool = False) -> dict[str, Any]:
    resolved = resolve_profile(workdir, profile, sets, probe=take_snapshot)
    return install_profile(workdir, resolved.profile, scope, allow_root=allow_root)


def served_command(workdir: Workdir, prof: Profile, scope: Scope) -> ServedCommand:
    """The plan's serve command for `prof` as a unit would run it (the API key included), every value checked
    for what a unit file cannot hold (UnsafeUnitValue naming the profile key, exit 2)."""
    if prof.multinode is not None:
        raise DsvError("a multi-node deployment cannot run as one systemd unit (it needs a Ray cluster first)",
                       fix="run `dsv4setup plan` for the per-node commands")
    command = render_serve(prof, workdir, load_state(workdir.state_file))
    argv = [str(a) for a in command.argv]
    served = ServedCommand(argv, dict(command.env), prof.serve.host, prof.serve.port, prof.serve.ready_timeout_s,
                           None, f"profile {prof.name}")
    try:
        render_unit(_spec(workdir, scope, served, None))
    except UnsafeUnitValue as exc:
        raise _named(exc, prof) from None
    return replace(served, api_key=server_api_key(workdir, prof.serve.host))


def install_profile(workdir: Workdir, prof: Profile, scope: Scope, *, allow_root: bool = False) -> dict[str, Any]:
    """`service install` of a resolved profile (what `upgrade`/`rollback` use to point a unit at a generation)."""
    return install_command(workdir, scope, served_command(workdir, prof, scope), allow_root=allow_root)


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


def _refuse_root(scope: Scope, allow_root: bool) -> None:
    """A system unit runs as the real uid (User=); as root only when asked for (--allow-root)."""
    if scope == "system" and os.getuid() == 0 and not allow_root:
        raise UsageError("a system unit installed by root would run the server as root (User=root): the serving "
                         "venv, the model and everything the server loads would run with root's rights",
                         fix="run `dsv4setup service install --system` as the user who owns the workdir (root then "
                             "only installs the unit), or add --allow-root to run the server as root on purpose",
                         reference="service-user-root")


def _spec(workdir: Workdir, scope: Scope, command: ServedCommand, api_key_file: Path | None) -> UnitSpec:
    return UnitSpec(scope=scope, workdir=workdir.root, argv=command.argv, env=command.env, host=command.host,
                    port=command.port, ready_timeout_s=command.ready_timeout_s, api_key_file=api_key_file,
                    user=current_user() if scope == "system" else None, description=f"vLLM server, {command.what}")


def install_command(workdir: Workdir, scope: Scope, command: ServedCommand, *,
                    allow_root: bool = False) -> dict[str, Any]:
    """Write the unit of `command`; --user: hand the running server over to it and start it.

    Every value is checked before anything is written (UnsafeUnitValue, exit 2)."""
    name = unit_name(workdir)
    path = unit_path(workdir, scope)
    render_unit(_spec(workdir, scope, command, None))  # refuse what cannot be written before judging the rest
    _refuse_root(scope, allow_root)
    if not Path(command.argv[0]).exists():
        raise DsvError(f"the serving interpreter {command.argv[0]} does not exist: nothing to run yet",
                       fix=f"set the deployment up first: `dsv4setup up --workdir {workdir.root}`")
    if scope == "user":
        require_user_manager()
    text = render_unit(_spec(workdir, scope, command, _key_file(workdir, command.api_key)))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text, mode=0o644)
    unit = InstalledUnit(scope=scope, name=name, unit_file=str(path),
                         command_fingerprint=command_fingerprint(command.argv, command.env), host=command.host,
                         port=command.port)
    write_installed(workdir, unit)
    if scope == "system":
        return _doc(workdir, "install", unit, installed=read_installed(workdir) is not None,
                    message=f"wrote {path}; run the root commands to install and start it (dsv4setup never uses "
                            "sudo): they install a copy whose sha256 matches the unit written now",
                    root_commands=_root_commands(unit, workdir, "install", text))
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
    """Stop and delete the workdir's unit: only the paths computed here (a record naming others is refused)."""
    unit = read_installed(workdir)
    recorded = unit or read_recorded(workdir)
    if recorded is None:
        return _doc(workdir, "remove", None, installed=False, message="no systemd unit is installed for this workdir")
    if recorded.scope == "system" and unit is not None and os.geteuid() != 0:
        return _doc(workdir, "remove", unit, installed=True,
                    message=f"{unit.name} is a system unit: run the root commands, then `dsv4setup service remove` "
                            "again to forget it", root_commands=_root_commands(unit, workdir, "remove"))
    name = unit_name(workdir)
    written = unit_path(workdir, recorded.scope)
    if unit is not None:
        systemctl(unit, "disable", "--now", name, timeout_s=180)
        if recorded.scope == "system":
            (SYSTEM_UNIT_DIR / name).unlink(missing_ok=True)
        systemctl(unit, "daemon-reload")
    if recorded.scope == "user":
        written.unlink(missing_ok=True)  # the user's own unit directory, removed as the user
    else:
        _remove_own(written)
    _remove_own(record_path(workdir))
    _key_file(workdir, None)
    return _doc(workdir, "remove", None, installed=False,
                message=f"stopped and removed {name}; the deployment is intact (`dsv4setup up` serves again)")
