"""Expected failures. Each carries what went wrong, where, and how to fix it.

The CLI turns these into a message and an exit code; only unexpected exceptions
show a traceback (and only with --verbose or DSV4SETUP_DEBUG=1).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
# `dsv4setup wait`: how the run it follows stands when it returns (distinct from 0-3 on purpose:
# a script tells "the run failed" from "wait itself was misused")
EXIT_WAIT_DONE = 10
EXIT_WAIT_FAILED = 11
EXIT_WAIT_RUNNING = 12


class DsvError(Exception):
    """Base of every expected failure: a message, an optional fix, an exit code.

    `command` is the argv that applies the fix when one does (`dsv4setup reset --step S`,
    `dsv4setup profile set KEY=VALUE`): agents run it as is.
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None, *, command: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.command = command

    def to_dict(self) -> dict[str, str | int | list[str] | None]:
        return {"error": type(self).__name__, "message": self.message, "hint": self.hint,
                "command": self.command, "exit_code": self.exit_code}


class UsageError(DsvError):
    """Bad input from the user: flags, files, values."""

    exit_code = EXIT_USAGE


class StateError(DsvError):
    """The state file cannot be read (corrupt, or written by an unknown version)."""

    exit_code = EXIT_USAGE


class LockHeldError(DsvError):
    """Another dsv4setup run holds the workdir lock."""

    exit_code = EXIT_LOCKED


class StepError(DsvError):
    """A step failed. `log_tail` is filled by the engine from the step log."""

    def __init__(self, message: str, hint: str | None = None, *, known_failure: str | None = None,
                 command: list[str] | None = None) -> None:
        super().__init__(message, hint, command=command)
        self.known_failure = known_failure
