"""One check's verdict."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("fail", "warn", "pass", "skip")  # worst first
AREAS = ("gpu", "topology", "host", "driver", "toolkit", "python", "vllm", "model")  # model: --model checks


@dataclass(frozen=True)
class CheckResult:
    """`id` is stable (area.name); `summary` carries the measured value; `fix` says what to do."""

    id: str
    status: Status
    summary: str
    fix: str | None = None

    @property
    def area(self) -> str:
        return self.id.split(".", 1)[0]

    def to_dict(self) -> dict[str, str | None]:
        return {"id": self.id, "status": self.status, "summary": self.summary, "fix": self.fix}


def passed(id_: str, summary: str) -> CheckResult:
    return CheckResult(id_, "pass", summary)


def skipped(id_: str, summary: str) -> CheckResult:
    return CheckResult(id_, "skip", summary)


def warned(id_: str, summary: str, fix: str) -> CheckResult:
    return CheckResult(id_, "warn", summary, fix)


def failed(id_: str, summary: str, fix: str) -> CheckResult:
    return CheckResult(id_, "fail", summary, fix)


def rank(status: Status) -> int:
    return STATUSES.index(status)


def worst(results: Iterable[CheckResult]) -> Status:
    return min((r.status for r in results), key=rank, default="pass")
