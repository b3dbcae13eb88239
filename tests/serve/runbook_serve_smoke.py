"""A runbook of the serve and smoke steps only (DSV4SETUP_RUNBOOK=tests.serve.runbook_serve_smoke:steps).

The e2e tests of the serve area prepare the venv and checkpoint themselves; the full runbook
is the lead's e2e test.
"""

from __future__ import annotations

from dsv4setup.engine import Step
from dsv4setup.serve.step import ServeStep
from dsv4setup.smoke.step import SmokeStep


def steps() -> list[Step]:
    return [ServeStep(), SmokeStep()]
