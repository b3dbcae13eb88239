"""The lazy command registry stays complete, and each command works when only its module is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from dsv4setup.cli import MODULE_OF_COMMAND, _register, app


def test_every_registered_command_is_mapped() -> None:
    _register()
    assert set(typer.main.get_command(app).commands) == set(MODULE_OF_COMMAND)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", sorted(MODULE_OF_COMMAND))
def test_command_help_with_only_its_module_imported(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "dsv4setup", command, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
