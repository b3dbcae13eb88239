"""The runbook's steps, in order. Each lives in its own module of this package."""

from __future__ import annotations

import importlib

from dsv4setup.engine import Step

STEP_ORDER: tuple[str, ...] = (
    "preflight", "toolkit", "vllm", "patches", "download", "checkpoint", "serve", "smoke",
)
OPTIONAL_STEPS: tuple[str, ...] = ("bench",)


def load_step(name: str) -> Step:
    """Import `dsv4setup.steps.<name>` and instantiate its STEP class (imports stay lazy)."""
    module = importlib.import_module(f"dsv4setup.steps.{name}")
    return module.STEP()


def runbook_steps(with_bench: bool = False) -> list[Step]:
    names = STEP_ORDER + (OPTIONAL_STEPS if with_bench else ())
    return [load_step(n) for n in names]
