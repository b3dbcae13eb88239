"""The fault suite's tally: each fault test records what it injected and what came of it, one JSON line
per fault in $DSV4SETUP_FAULT_TALLY (when set); tests/faults/report.py turns the lines into
benchmarks/faults.md. A record is written before the test's assertions, so a failure still counts.

The security tests (marker `security`, wherever they live) record each attack the same way: what was
tried, what it got (401, refused, no join) and whether it reached anything."""

from __future__ import annotations

import json
import os


def record(kind: str, fault: str, *, survived: bool, data_lost: bool = False) -> None:
    """One injected fault: did dsv4setup recover (survived) and was anything it had written lost or torn."""
    _write({"kind": kind, "fault": fault, "survived": survived, "data_lost": data_lost})


def attack(route: str, attempt: str, *, got: str, reached: bool) -> None:
    """One attack tried by a security test: on which route (server, cluster, unit, files, client), what
    the attacker did, what it got back, and whether it reached anything it should not have."""
    _write({"kind": "attack", "route": route, "fault": attempt, "got": got, "survived": not reached,
            "data_lost": False})


def _write(row: dict[str, object]) -> None:
    path = os.environ.get("DSV4SETUP_FAULT_TALLY")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
