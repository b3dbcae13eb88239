"""What the serve step records (validated by the engine before saving)."""

from __future__ import annotations

from dsv4setup.core.outputs import StepOutputs


class ServeOutputs(StepOutputs):
    step = "serve"

    pid: int
    host: str
    port: int
    base_url: str
    log: str
    started_at: str
    ready_s: float
    served_model_name: str
    auth: bool
    api_key_source: str | None
