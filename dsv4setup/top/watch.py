"""Where this workdir's server answers, and the loop of scrapes that yields one document per interval."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from dsv4setup.core.errors import UsageError
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.apikey import client_api_key
from dsv4setup.serve.process import read_record
from dsv4setup.serve.readiness import base_url
from dsv4setup.top.model import top_document
from dsv4setup.top.scrape import scrape


def server_url(workdir: Workdir, url: str | None) -> str:
    """--url, else the address of the server recorded for the workdir."""
    if url:
        return url.rstrip("/")
    record = read_record(workdir)
    if record is None:
        raise UsageError(f"no server is recorded for {workdir.root} ({workdir.run_dir / 'serve.json'})",
                         fix="start it with `dsv4setup up` (or `dsv4setup serve`), or pass --url http://HOST:PORT")
    return base_url(record.host, record.port)


def documents(workdir: Workdir, url: str, interval_s: float) -> Iterator[dict[str, Any]]:
    """One document per interval, forever: each covers the time since the previous scrape."""
    if interval_s <= 0:
        raise UsageError(f"--interval {interval_s}: expected a positive number of seconds")
    key = client_api_key(workdir)
    before = scrape(url, key)
    while True:
        time.sleep(max(interval_s - (time.monotonic() - before.at), 0.0))
        after = scrape(url, key)
        yield top_document(before, after, base_url=url, workdir=str(workdir.root))
        before = after
