"""`service install|status|remove`: the server under systemd."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, ProfileOpt, SetOpt, WorkdirOpt, err, out, workdir_from
from dsv4setup.cli.output import Document, emit
from dsv4setup.core.errors import UsageError

service_app = typer.Typer(no_args_is_help=True, help="Run the server as a systemd unit: restarts, starts at boot.")
app.add_typer(service_app, name="service")

UserOpt = Annotated[bool, typer.Option("--user", help="A user unit (systemctl --user); the default.")]
SystemOpt = Annotated[bool, typer.Option("--system", help="A system unit: written into the workdir with the "
                                                          "root commands to install it (never sudo).")]
AllowRootOpt = Annotated[bool, typer.Option("--allow-root", help="--system run by root: let the unit run the server "
                                                                  "as root (User=root); refused without it.")]


def _print(doc: Document) -> None:
    out.print(doc["message"], highlight=False, markup=False)
    state = doc.get("state")
    if state:
        out.print(f"unit: {doc['unit']} ({doc['scope']}): {state['active']} ({state['sub']}), "
                  f"{state['enabled'] or 'unknown'} at boot, restarts {state['restarts']}", highlight=False,
                  markup=False)
    server = doc["server"]
    out.print(f"server: {'healthy' if server['healthy'] else 'running' if server['running'] else 'not running'}"
              + (f" (pid {server['pid']}, {server['base_url']})" if server["pid"] else ""), highlight=False)
    linger = doc.get("linger")
    if linger and not linger["enabled"]:
        err.print(f"note: {linger['note']}", highlight=False, markup=False)
    if doc["root_commands"]:
        out.print("run as root:", highlight=False)
        for command in doc["root_commands"]:
            out.print(f"  {command}", highlight=False, markup=False)
    if doc.get("journal") and doc["installed"]:
        out.print(f"journal: {doc['journal']}; server log: dsv4setup logs serve", highlight=False, markup=False)


def _emit(doc: dict[str, Any], as_json: bool) -> None:
    emit(doc, as_json, _print)


@service_app.command("install")
def install(
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    user: UserOpt = False,
    system: SystemOpt = False,
    allow_root: AllowRootOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Install the plan's server as a unit and (--user) start it; up/down/serve/bench then use systemctl."""
    from dsv4setup.service.manage import install as do_install

    if user and system:
        raise UsageError("choose one of --user and --system")
    _emit(do_install(workdir_from(workdir), profile, set_ or [], "system" if system else "user",
                     allow_root=allow_root), json_)


@service_app.command("status")
def status(workdir: WorkdirOpt = None, json_: JsonOpt = False) -> None:
    """The unit's state (active, enabled at boot, restarts), lingering, and the server's health."""
    from dsv4setup.service.manage import status as do_status

    _emit(do_status(workdir_from(workdir)), json_)


@service_app.command("remove")
def remove(workdir: WorkdirOpt = None, json_: JsonOpt = False) -> None:
    """Stop and remove the unit; the deployment stays (`dsv4setup up` serves again)."""
    from dsv4setup.service.manage import remove as do_remove

    _emit(do_remove(workdir_from(workdir)), json_)
