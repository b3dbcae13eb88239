"""Expected failures. Each carries a reference id, what went wrong and where, the fix, and the next command.

The CLI turns these into a message and an exit code; only unexpected exceptions
show a traceback (and only with --verbose or DSV4SETUP_DEBUG=1).
"""

from __future__ import annotations

import shlex

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
# `dsv4setup wait`: how the run it follows stands when it returns (distinct from 0-3 on purpose:
# a script tells "the run failed" from "wait itself was misused")
EXIT_WAIT_DONE = 10
EXIT_WAIT_FAILED = 11
EXIT_WAIT_RUNNING = 12
ERROR_SCHEMA = "dsv4setup.error/2"


class DsvError(Exception):
    """Base of every expected failure (pip's DiagnosticPipError is the model).

    `reference`: a stable kebab-case id agents can branch on (the class's, unless given);
    `message`: what went wrong, where; `fix`: what to do about it; `command`: the dsv4setup
    command to run next, when one is known.
    """

    exit_code = EXIT_FAILED
    reference = "error"

    def __init__(self, message: str, fix: str | None = None, *, command: str | list[str] | None = None,
                 reference: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.command = shlex.join(command) if isinstance(command, list) else command  # as a user types it
        if reference is not None:
            self.reference = reference

    def to_dict(self) -> dict[str, str | int | None]:
        return {"error": type(self).__name__, "reference": self.reference, "message": self.message,
                "fix": self.fix, "command": self.command, "exit_code": self.exit_code}

    def to_doc(self) -> dict[str, str | int | bool | None]:
        """The `dsv4setup.error/2` document a command prints with --json when it fails."""
        return {"schema": ERROR_SCHEMA, "ok": False, **self.to_dict()}


class UsageError(DsvError):
    """Bad input from the user: flags, files, values."""

    exit_code = EXIT_USAGE
    reference = "usage"


class StateError(DsvError):
    """The state file cannot be read (corrupt, or written by an unknown version)."""

    exit_code = EXIT_USAGE
    reference = "state-file"


class LockHeldError(DsvError):
    """Another dsv4setup run holds the workdir lock."""

    exit_code = EXIT_LOCKED
    reference = "workdir-locked"


class StepError(DsvError):
    """A step failed. `log_tail` is filled by the engine from the step log."""

    reference = "step-failed"

    def __init__(self, message: str, fix: str | None = None, *, known_failure: str | None = None,
                 command: str | list[str] | None = None) -> None:
        super().__init__(message, fix, command=command, reference=known_failure)
        self.known_failure = known_failure
