"""Scrub a hardware snapshot before it leaves the machine (a committed fixture, a bug report).

Removed: the host name (wherever it appears), GPU/MIG UUIDs (replaced by stable placeholders
in the same format, so the snapshot still validates and GPUs stay distinguishable), any
serial number, and user names in home paths. Everything the checks judge is kept.
"""

from __future__ import annotations

import copy
import re
from typing import Any

SCRUBBED_HOST = "scrubbed-host"
SCRUBBED_SERIAL = "scrubbed"
_UUID = re.compile(r"\b(GPU|MIG)-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_HOME = re.compile(r"(/home/|/Users/)[^/\s\"']+")


def _placeholder(kind: str, index: int) -> str:
    return f"{kind}-00000000-0000-0000-0000-{index:012d}"


class _Scrubber:
    def __init__(self, hostname: str | None) -> None:
        self.hostname = hostname
        self.uuids: dict[str, str] = {}

    def text(self, value: str) -> str:
        if self.hostname and len(self.hostname) >= 3:  # a one-letter name would hit every word
            value = value.replace(self.hostname, SCRUBBED_HOST)
        value = _UUID.sub(self._uuid, value)
        return _HOME.sub(r"\1user", value)

    def _uuid(self, match: re.Match[str]) -> str:
        found = match.group(0).upper()
        if found not in self.uuids:
            self.uuids[found] = _placeholder(match.group(1), len(self.uuids))
        return self.uuids[found]

    def walk(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {self.walk(k) if isinstance(k, str) else k:
                    SCRUBBED_SERIAL if "serial" in str(k).lower() and v is not None else self.walk(v)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        return self.text(value) if isinstance(value, str) else value


def scrub_snapshot(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of `doc` without host name, UUIDs, serials or user names; the input is not changed."""
    host = doc.get("host")
    hostname = host.get("hostname") if isinstance(host, dict) and isinstance(host.get("hostname"), str) else None
    out: dict[str, Any] = _Scrubber(hostname).walk(copy.deepcopy(doc))
    if isinstance(out.get("host"), dict) and "hostname" in out["host"]:
        out["host"]["hostname"] = SCRUBBED_HOST
    return out
