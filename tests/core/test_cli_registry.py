"""The declared command registry stays complete and true, `--help` imports no command module, and each
command works when only its module is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer

from dsv4setup.cli import COMMANDS, app, register


def test_registry_matches_the_registered_commands_and_their_help() -> None:
    register()
    group = typer.main.get_command(app)
    real = group.commands  # type: ignore[attr-defined]
    assert [c.name for c in COMMANDS] == list(dict.fromkeys(c.name for c in COMMANDS))  # no name twice
    assert set(real) == {c.name for c in COMMANDS}
    for info in COMMANDS:
        assert info.summary == " ".join((real[info.name].help or "").split("\n\n")[0].split()), info.name
        assert real[info.name].callback is None or real[info.name].callback.__module__ == f"dsv4setup.cli.{info.module}"


def test_top_level_help_lists_every_command_and_imports_none() -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "dsv4setup", "--help"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    command_modules = {f"dsv4setup.cli.{c.module}" for c in COMMANDS}
    assert not imported & command_modules, sorted(imported & command_modules)
    assert "dsv4setup.cli" in imported  # the scan reads the real import log
    rows = {" ".join(line.strip("│ ").split()) for line in result.stdout.splitlines()}
    for info in COMMANDS:
        assert f"{info.name} {info.summary}" in rows, (info.name, result.stdout)


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_command_help_with_only_its_module_imported(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "dsv4setup", command, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
