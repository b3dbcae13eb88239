"""Where this workdir's server answers, and the loop of scrapes that yields one document per interval.

The workdir's API key goes only to the server recorded for the workdir (run/serve.json's address
and port) or to a loopback address: `top --url` elsewhere is scraped without it.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from dsv4setup.core.errors import UsageError
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.apikey import client_api_key
from dsv4setup.serve.process import read_record
from dsv4setup.serve.readiness import base_url, connect_host, is_loopback
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


DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(url: str) -> tuple[str, int] | None:
    """The (host, port) an http(s) URL connects to; None when it is not one."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.scheme in DEFAULT_PORTS and parts.hostname and port else None


def key_for(workdir: Workdir, url: str) -> str | None:
    """The workdir's key when url is its recorded server or a loopback address; None for any other server."""
    target = _host_port(url)
    if target is None:
        return None
    record = read_record(workdir)
    recorded = (connect_host(record.host), record.port) if record is not None else None
    return client_api_key(workdir) if target == recorded or is_loopback(target[0]) else None


def documents(workdir: Workdir, url: str, interval_s: float) -> Iterator[dict[str, Any]]:
    """One document per interval, forever: each covers the time since the previous scrape."""
    if interval_s <= 0:
        raise UsageError(f"--interval {interval_s}: expected a positive number of seconds")
    key = key_for(workdir, url)
    before = scrape(url, key)
    while True:
        time.sleep(max(interval_s - (time.monotonic() - before.at), 0.0))
        after = scrape(url, key)
        yield top_document(before, after, base_url=url, workdir=str(workdir.root))
        before = after
