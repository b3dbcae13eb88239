"""`next`: what an agent (or a person) should do now."""

from __future__ import annotations

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, WorkdirOpt, out, workdir_from
from dsv4setup.cli.output import emit_json


@app.command("next")
def next_(workdir: WorkdirOpt = None, json_: JsonOpt = False) -> None:
    """The single next action: run, fix, wait or done, with the exact command."""
    from dsv4setup.next_action import next_action

    action = next_action(workdir_from(workdir))
    if json_:
        emit_json(action.to_doc())
        return
    out.print(f"[bold]{action.action}[/]: {action.why}")
    if action.fix:
        out.print(f"[bold]fix:[/] {action.fix}")
    out.print("  " + " ".join(action.command), markup=False)
