"""`next`: what an agent (or a person) should do now."""

from __future__ import annotations

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, WorkdirOpt, emit_json, out, workdir_from


@app.command("next")
def next_(workdir: WorkdirOpt = None, json_: JsonOpt = False) -> None:
    """The single next action: run, fix, wait or done, with the exact command."""
    from dsv4setup.next_action import next_action

    wd = workdir_from(workdir)
    action = next_action(wd)
    if json_:
        emit_json(action.to_doc())
        return
    out.print(wd.header, highlight=False)
    out.print(f"[bold]{action.action}[/]: {action.why}")
    if action.hint:
        out.print(f"[bold]fix:[/] {action.hint}")
    out.print("  " + " ".join(action.command), markup=False)
