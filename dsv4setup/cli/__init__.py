"""The `dsv4setup` command: parses, calls the core, renders. No logic lives here."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from types import ModuleType

import click
import typer
from typer._click import core as _tclick  # typer >= 0.20 (pyproject) subclasses its own vendored click
from typer.core import TyperCommand, TyperGroup

from dsv4setup import __version__
from dsv4setup.cli.common import debug_enabled, err
from dsv4setup.core.errors import EXIT_FAILED, EXIT_USAGE, DsvError

_typer_click: ModuleType
try:  # typer >= 0.20 vendors its own click: its parse errors are not click's classes
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions


@dataclass(frozen=True)
class CommandInfo:
    """A command as `--help` lists it: its name, the cli module that defines it, one line on what it does."""

    name: str
    module: str
    summary: str


# The declared registry (pip's commands/__init__.py is the model). Each cli module registers
# its commands on `app` when imported; only the module of the command being run is imported
# (start-up time: `doctor --json` is what agents call first). `--help` lists this table and
# imports no command module; an unknown word imports them all (for click's suggestions).
COMMANDS: tuple[CommandInfo, ...] = (
    CommandInfo("up", "runbook", "Run the runbook: preflight → toolkit → vllm → patches → download → checkpoint "
                                 "→ cluster → serve → smoke."),
    CommandInfo("wait", "runbook", "Wait (at most --timeout seconds) for the run of this workdir; exit 10 done, 11 "
                                   "failed, 12 still running."),
    CommandInfo("status", "runbook", "Show each step's status, each done step checked on the machine as a no-op "
                                     "`up` checks it (no lock needed)."),
    CommandInfo("plan", "runbook", "Show what `up` would do, and the exact `vllm serve` command line and environment."),
    CommandInfo("logs", "runbook", "Print (or follow) a step's log, secrets redacted."),
    CommandInfo("reset", "runbook", "Forget a step's record (it runs again), or move the whole state aside. "
                                    "Deletes nothing else."),
    CommandInfo("upgrade", "upgrade", "Build a new serving venv generation beside the current one, switch the server "
                                      "to it and smoke it; on any failure switch back (exit 1, the old server "
                                      "serving)."),
    CommandInfo("rollback", "upgrade", "Switch the server back to the previous generation (stop, start, smoke), and "
                                       "keep its vLLM version."),
    CommandInfo("generations", "upgrade", "List the serving venv's generations: vLLM version, patches, created, last "
                                          "smoke, which is current."),
    CommandInfo("doctor", "doctor", "Check GPUs, interconnect, driver, host and toolchain; recommend a profile, TP "
                                    "size, MTP k, serve args, env."),
    CommandInfo("download", "checkpoint", "Download the profile's checkpoint (pinned revision, resumable, verified), "
                                          "as the runbook's download step."),
    CommandInfo("serve", "serve", "Start the vLLM server (the serve step alone) and wait until it is ready."),
    CommandInfo("down", "serve", "Stop the server of this workdir (SIGTERM to its process group, SIGKILL after "
                                 "--grace) and clean up."),
    CommandInfo("smoke", "serve", "Smoke-test the running server: a chat completion, and MTP drafts made and "
                                  "accepted (from /metrics)."),
    CommandInfo("tiny-model", "serve",
                "Write a tiny DeepSeek-V3 + MTP checkpoint (the easy one is what the cpu-tiny profile serves)."),
    CommandInfo("next", "agent", "The single next action: run, fix, wait or done, with the exact command."),
    CommandInfo("profile", "profile", "Hardware profiles: list, show, validate, import."),
    CommandInfo("patches", "patches", "Status, apply and revert of dsv4setup's vLLM patches."),
    CommandInfo("checkpoint", "checkpoint", "Judge a checkpoint's metadata (MTP block, dtypes, ignore list, shards) "
                                            "locally or on the hub, headers only."),
    CommandInfo("top", "top", "Watch the server live: health, requests, tokens/s, MTP acceptance (per draft "
                              "position), KV cache, TTFT/TPOT."),
    CommandInfo("service", "service", "Run the server as a systemd unit: restarts, starts at boot."),
    CommandInfo("bench", "bench", "The matched MTP benchmark: for each k, restart the server with that "
                                  "num_speculative_tokens and measure it with vLLM's own `vllm bench serve`; report, "
                                  "chart, compare, apply the best k."),
)
COMMAND_BY_NAME = {c.name: c for c in COMMANDS}


class LazyGroup(TyperGroup):
    """The root group: a command whose module was not imported is listed from the registry (help only)."""

    def list_commands(self, ctx: _tclick.Context) -> list[str]:
        return [c.name for c in COMMANDS] + [n for n in super().list_commands(ctx) if n not in COMMAND_BY_NAME]

    def get_command(self, ctx: _tclick.Context, cmd_name: str) -> _tclick.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in COMMAND_BY_NAME:  # listed by --help, never run: its word imports it
            return TyperCommand(cmd_name, help=COMMAND_BY_NAME[cmd_name].summary)
        return command


app = typer.Typer(
    name="dsv4setup", cls=LazyGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Bare Linux GPU box -> verified DeepSeek-V4-Flash + MTP server on vLLM, step by resumable step.",
)

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


def register(args: list[str] | None = None) -> None:
    """Import command modules: the one `args` names, none for top-level help, all for an unknown word or no args."""
    word = _command_word(args) if args is not None else ""
    if word is None:
        return
    known = COMMAND_BY_NAME.get(word)
    names = [known.module] if known else list(dict.fromkeys(c.module for c in COMMANDS))
    for name in names:
        try:
            importlib.import_module(f"dsv4setup.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"dsv4setup.cli.{name}":
                raise


def report_error(exc: DsvError, as_json: bool) -> None:
    if as_json:
        from dsv4setup.cli.output import emit_json

        emit_json(exc.to_doc())
        return
    err.print(f"[bold red]error:[/] {exc.message}", markup=True, highlight=False)
    if exc.fix:
        err.print(f"[bold]fix:[/] {exc.fix}", highlight=False)
    if exc.command:
        err.print(f"[bold]then run:[/] {exc.command}", highlight=False)


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
    register(args)
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
                              fix="run again with -v (or DSV4SETUP_DEBUG=1) for the traceback and report it"),
                     as_json)
        sys.exit(EXIT_FAILED)
    sys.exit(code if isinstance(code, int) else 0)
