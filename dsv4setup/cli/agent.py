"""`next`: what an agent (or a person) should do now."""

from __future__ import annotations

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, WorkdirOpt, out, workdir_from
from dsv4setup.cli.output import Document, emit


@app.command("next")
def next_(workdir: WorkdirOpt = None, json_: JsonOpt = False) -> None:
    """The single next action: run, fix, wait or done, with the exact command."""
    from dsv4setup.next_action import next_action

    wd = workdir_from(workdir)
    emit(next_action(wd).to_doc(), json_, lambda doc: _print_next(doc, wd.header))


def _print_next(doc: Document, header: str) -> None:
    out.print(header, highlight=False)
    out.print(f"[bold]{doc['action']}[/]: {doc['why']}")
    if doc["fix"]:
        out.print(f"[bold]fix:[/] {doc['fix']}")
    out.print("  " + " ".join(doc["command"]), markup=False)
    for command in doc["then"] or []:
        out.print("  then: " + " ".join(command), markup=False)
