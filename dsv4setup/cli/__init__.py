"""The `dsv4setup` command: parses, calls the core, renders. No logic lives here."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click
import typer

try:  # typer >= 0.20 vendors its own click: its parse errors are not click's classes
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

from dsv4setup import __version__
from dsv4setup.cli.common import debug_enabled, emit_json, err
from dsv4setup.core.errors import EXIT_FAILED, EXIT_USAGE, DsvError

app = typer.Typer(
    name="dsv4setup", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Bare Linux GPU box -> verified DeepSeek-V4-Flash + MTP server on vLLM, step by resumable step.",
)

# Each module registers its commands on `app` when imported. Only the module of the command
# being run is imported (start-up time: `doctor --json` is what agents call first); --help
# and unknown words import them all.
COMMAND_MODULES = ("runbook", "doctor", "profile", "patches", "checkpoint", "serve", "bench", "agent")
MODULE_OF_COMMAND = {
    "up": "runbook", "wait": "runbook", "status": "runbook", "plan": "runbook", "logs": "runbook", "reset": "runbook",
    "doctor": "doctor", "profile": "profile", "patches": "patches", "download": "checkpoint",
    "checkpoint": "checkpoint", "serve": "serve", "down": "serve", "smoke": "serve", "tiny-model": "serve",
    "bench": "bench", "next": "agent",
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dsv4setup {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    if verbose:
        os.environ["DSV4SETUP_DEBUG"] = "1"


def _command_word(args: list[str]) -> str | None:
    return next((a for a in args if not a.startswith("-")), None)


def _register(args: list[str] | None = None) -> None:
    """Import the command modules: only the one `args` names, or all of them."""
    word = _command_word(args) if args is not None else None
    names = (MODULE_OF_COMMAND[word],) if word in MODULE_OF_COMMAND else COMMAND_MODULES
    for name in names:
        try:
            importlib.import_module(f"dsv4setup.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"dsv4setup.cli.{name}":
                raise


def report_error(exc: DsvError, as_json: bool) -> None:
    if as_json:
        emit_json({"schema": "dsv4setup.error/2", "ok": False, **exc.to_dict()})
        return
    err.print(f"[bold red]error:[/] {exc.message}", markup=True, highlight=False)
    if exc.hint:
        err.print(f"[bold]fix:[/] {exc.hint}", highlight=False)


VERBOSE_FLAGS = ("-v", "--verbose")


def _lift_verbose(args: list[str]) -> list[str]:
    """`-v` is accepted anywhere (`dsv4setup up -v` as well as `dsv4setup -v up`): no command has its own -v."""
    if "--" in args:
        head, tail = args[:args.index("--")], args[args.index("--"):]
    else:
        head, tail = args, []
    if not any(a in VERBOSE_FLAGS for a in head):
        return args
    os.environ["DSV4SETUP_DEBUG"] = "1"
    return [a for a in head if a not in VERBOSE_FLAGS] + tail


def main(argv: list[str] | None = None) -> None:
    args = _lift_verbose(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    _register(args)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="dsv4setup", standalone_mode=False)
    except DsvError as exc:
        if debug_enabled():
            traceback.print_exc()
        report_error(exc, as_json)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        err.print("aborted")
        sys.exit(130)
    except (click.ClickException, _typer_click.ClickException) as exc:
        exc.show()
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
    except KeyboardInterrupt:
        err.print("interrupted; run the same command again to resume")
        sys.exit(130)
    except Exception as exc:  # a bug, not an expected failure
        if debug_enabled():
            raise
        report_error(DsvError(f"internal error: {type(exc).__name__}: {exc}",
                              hint="run again with -v (or DSV4SETUP_DEBUG=1) for the traceback and report it"),
                     as_json)
        sys.exit(EXIT_FAILED)
    sys.exit(code if isinstance(code, int) else 0)
