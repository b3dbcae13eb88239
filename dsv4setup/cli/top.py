"""`top`: the live view of the server (health, queue, tokens/s, MTP acceptance, KV cache, latency)."""

from __future__ import annotations

from typing import Annotated

import typer

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, WorkdirOpt, workdir_from
from dsv4setup.cli.output import emit_json
from dsv4setup.core.errors import EXIT_FAILED


@app.command()
def top(
    workdir: WorkdirOpt = None,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between scrapes (rates cover one).")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Scrape twice, --interval apart; print one screen.")] = False,
    url: Annotated[str | None, typer.Option(help="The server's base URL; default: this workdir's server.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Watch the server live: health, requests, tokens/s, MTP acceptance (per draft position), KV cache, TTFT/TPOT."""
    from rich.console import Console
    from rich.live import Live

    from dsv4setup.top.render import top_renderable
    from dsv4setup.top.watch import documents, server_url

    wd = workdir_from(workdir)
    docs = documents(wd, server_url(wd, url), interval)
    screen = Console(highlight=False)  # wraps long lines itself (the shared console soft-wraps for copying)
    if once or json_:
        doc = next(docs)
        if json_:
            emit_json(doc)
        else:
            screen.print(top_renderable(doc))
        if not doc["ok"]:
            raise typer.Exit(EXIT_FAILED)
        return
    try:
        with Live(console=screen, auto_refresh=False, transient=False) as live:
            for doc in docs:
                live.update(top_renderable(doc), refresh=True)
    except KeyboardInterrupt:
        return
