"""serve: start vLLM detached (own process group), wait until /health answers, record pid and port.

The command line is rendered from the profile (dsv4setup.serve.command); `launch` starts it. vLLM's own output
is appended to this step's log, `logs/serve.log`, after the step's section header, so
`dsv4setup logs serve` shows both. A server left starting by an interrupted `up` (same
command line) is adopted, not started twice.
"""

from __future__ import annotations

from typing import Any

from dsv4setup.cluster.nodes import on_worker
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.engine import RunContext, Step
from dsv4setup.serve import launch
from dsv4setup.serve.manager import server_state
from dsv4setup.serve.outputs import ServeOutputs
from dsv4setup.serve.process import command_fingerprint
from dsv4setup.serve.readiness import base_url


class ServeStep(Step):
    name = "serve"
    description = "start vLLM in the background and wait until /health answers"
    needs = ("preflight", "toolkit", "vllm", "patches", "download", "checkpoint", "cluster")  # all before it
    Outputs = ServeOutputs

    def not_applicable(self, ctx: RunContext) -> str | None:
        return on_worker(ctx)

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        argv, env = launch.render_command(ctx, launch.effective_profile(ctx))
        return {"argv": argv, "env": env}

    def is_done(self, ctx: RunContext) -> Finding:
        state = server_state(ctx.workdir)
        if not state.healthy or state.record is None:
            return postcondition(False, state.detail)
        _, argv, env, _ = launch.server_command(ctx)
        if state.record.command_fingerprint != command_fingerprint(argv, env):
            return postcondition(False, f"the server (pid {state.record.pid}) runs another command line than the "
                                        "plan (e.g. another k after a bench)")
        return postcondition(True, f"{state.detail} at {base_url(state.record.host, state.record.port)}")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return launch.launch(ctx)


STEP = ServeStep
