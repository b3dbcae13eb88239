"""Shared CLI options and the two consoles (stdout for documents and tables, stderr for people)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dsv4setup.core.workdir import ENV_WORKDIR, Workdir


def _console(stderr: bool) -> Console:
    # NO_COLOR is honoured by rich itself. soft_wrap: messages keep paths and commands on one
    # line (copy-pasteable, greppable by agents); tables still fit narrow terminals.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


err = _console(stderr=True)
out = _console(stderr=False)

WorkdirOpt = Annotated[Path | None, typer.Option(
    "--workdir", "-w", help=f"Deployment directory (state, logs, venv, model). Env: {ENV_WORKDIR}.",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]
ProfileOpt = Annotated[str | None, typer.Option(
    "--profile", "-p", help="Profile name (see `dsv4setup profile list`); default: the last one used, "
                            "else the best match for this machine.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a profile value, e.g. --set serve.max_model_len=131072 (repeatable).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Non-interactive: never ask.")]


def workdir_from(option: Path | None) -> Workdir:
    return Workdir.resolve(option)


def debug_enabled() -> bool:
    return os.environ.get("DSV4SETUP_DEBUG", "") not in ("", "0")


def interactive() -> bool:
    """Prompts only when a person is at a terminal; agents (no TTY) never block."""
    return sys.stdin.isatty() and sys.stderr.isatty()
