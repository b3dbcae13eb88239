"""What `up` will do with one step, and why: run, skip or not selected (read by plan, up, the serve plan)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["run", "skip", "not-selected"]


@dataclass(frozen=True)
class Decision:
    step: str
    action: Action
    reason: str
    description: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"step": self.step, "action": self.action, "reason": self.reason,
                "description": self.description}
