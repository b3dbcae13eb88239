"""One finding: the verdict of a check, a lint rule, a smoke check or a step's postcondition.

Doctor, preflight, the checkpoint lint (local and remote), the smoke test, every step's
`is_done`, each known failure (`serve.signatures.KnownFailure.finding`) and each patch's status
(`patches.status.PatchReport.finding`) speak this one type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("fail", "warn", "pass", "skip")  # worst first
AREAS = ("gpu", "topology", "host", "driver", "toolkit", "python", "vllm", "model")  # model: --model checks
POSTCONDITION = "postcondition"


@dataclass(frozen=True)
class Finding:
    """`id` is stable (area.name); `summary` carries the measured value; `fix` says what to do;
    `command`, when known, is the dsv4setup command that does it or checks again."""

    id: str
    status: Status
    summary: str
    fix: str | None = None
    command: str | None = None

    @property
    def area(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def ok(self) -> bool:
        """Nothing to act on: passed, skipped or only a warning."""
        return self.status != "fail"

    def to_dict(self) -> dict[str, str | None]:
        return {"id": self.id, "status": self.status, "summary": self.summary, "fix": self.fix,
                "command": self.command}


def passed(id_: str, summary: str) -> Finding:
    return Finding(id_, "pass", summary)


def skipped(id_: str, summary: str) -> Finding:
    return Finding(id_, "skip", summary)


def warned(id_: str, summary: str, fix: str) -> Finding:
    return Finding(id_, "warn", summary, fix)


def failed(id_: str, summary: str, fix: str) -> Finding:
    return Finding(id_, "fail", summary, fix)


def postcondition(holds: bool, summary: str) -> Finding:
    """A step's `is_done` verdict, checked on the machine: pass when its work still holds, fail (drift) when not."""
    return Finding(POSTCONDITION, "pass" if holds else "fail", summary)


def rank(status: Status) -> int:
    return STATUSES.index(status)


def worst(results: Iterable[Finding]) -> Status:
    return min((r.status for r in results), key=rank, default="pass")
