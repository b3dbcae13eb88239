"""The fault suite's tally: each fault test records what it injected and what came of it, one JSON line
per fault in $DSV4SETUP_FAULT_TALLY (when set); tests/faults/report.py turns the lines into
benchmarks/faults.md. A record is written before the test's assertions, so a failure still counts."""

from __future__ import annotations

import json
import os


def record(kind: str, fault: str, *, survived: bool, data_lost: bool = False) -> None:
    """One injected fault: did dsv4setup recover (survived) and was anything it had written lost or torn."""
    path = os.environ.get("DSV4SETUP_FAULT_TALLY")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": kind, "fault": fault, "survived": survived, "data_lost": data_lost}) + "\n")
