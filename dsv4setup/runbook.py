"""Assemble a Runbook for a workdir: the resolved profile plus the step list.

`DSV4SETUP_RUNBOOK=module:attr` swaps in another step list (a callable returning steps):
an extension point for site-specific runbooks, also used by the kill-and-resume tests.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

from dsv4setup.core.engine import Runbook, Step
from dsv4setup.core.errors import UsageError
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.resolve import ResolvedProfile, resolve_profile

ENV_RUNBOOK = "DSV4SETUP_RUNBOOK"

# The runbook's steps, in order. Each step is the package of the same name; its `step` module
# holds the Step (`STEP`), imported only when the runbook is built.
STEP_ORDER: tuple[str, ...] = (
    "preflight", "toolkit", "vllm", "patches", "download", "checkpoint", "cluster", "serve", "smoke",
)
OPTIONAL_STEPS: tuple[str, ...] = ("bench",)


def load_step(name: str) -> Step:
    """Import `dsv4setup.<name>.step` and instantiate its STEP class (imports stay lazy)."""
    module = importlib.import_module(f"dsv4setup.{name}.step")
    step: Step = module.STEP()
    return step


def runbook_steps(with_bench: bool = False) -> list[Step]:
    names = STEP_ORDER + (OPTIONAL_STEPS if with_bench else ())
    return [load_step(n) for n in names]


@dataclass
class RunbookRequest:
    workdir: Workdir
    profile: str | None = None
    sets: list[str] = field(default_factory=list)
    with_bench: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def _custom_steps(spec: str) -> list[Step]:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr or "steps")
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"{ENV_RUNBOOK}={spec}: cannot load it ({exc})",
                         hint="use module:callable, with the module on PYTHONPATH") from None
    return list(factory())


def step_names(with_bench: bool = True) -> list[str]:
    """The runbook's step names, without resolving a profile (for `status`)."""
    spec = os.environ.get(ENV_RUNBOOK)
    if spec:
        return [s.name for s in _custom_steps(spec)]
    return list(STEP_ORDER + (OPTIONAL_STEPS if with_bench else ()))


def build_runbook(request: RunbookRequest) -> tuple[Runbook, ResolvedProfile]:
    resolved = resolve_profile(request.workdir, request.profile, request.sets)
    spec = os.environ.get(ENV_RUNBOOK)
    steps = _custom_steps(spec) if spec else runbook_steps(with_bench=request.with_bench)
    return Runbook(steps, request.workdir, resolved.profile, request.options), resolved
