"""Take, save and load the hardware snapshot (`dsv4setup.hardware/1`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from dsv4setup.core.errors import UsageError
from dsv4setup.core.resources import package_file
from dsv4setup.core.workdir import Workdir
from dsv4setup.preflight import HARDWARE_SCHEMA

SNAPSHOT_FIX = "write a fresh one on the machine with `dsv4setup doctor --save-snapshot FILE`"


class SnapshotError(UsageError):
    """A snapshot file that cannot be judged: missing, not JSON, or not a hardware snapshot."""


SNAPSHOT_FILE = "hardware.json"  # the snapshot the preflight step judged, in the workdir

def take_snapshot(workdir: Workdir, *, nvml: ModuleType | None = None,
                  env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Probe this machine. Never raises for what the machine lacks (no driver, no nvcc, no venv)."""
    from dsv4setup.preflight.host_facts import probe_host
    from dsv4setup.preflight.nvml import probe_nvml
    from dsv4setup.preflight.toolchain import probe_python_env, probe_toolchain

    environ = os.environ if env is None else env
    facts = probe_nvml(nvml)
    doc: dict[str, Any] = {
        "schema": HARDWARE_SCHEMA,
        "captured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": probe_host(workdir.root, workdir.models_dir, workdir.venv_dir, workdir.toolkit_dir, environ),
        "driver": facts.driver,
        "gpus": facts.gpus,
        "links": facts.links,
        "toolchain": probe_toolchain(environ),
        "python_env": probe_python_env(workdir.venv_python),
    }
    if facts.nvml_error is not None:
        doc["nvml_error"] = facts.nvml_error
    if facts.notes:
        doc["probe_notes"] = facts.notes
    return doc


@cache
def hardware_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(package_file("schemas", "hardware.schema.json").read_text(encoding="utf-8"))
    return schema


def snapshot_errors(doc: Any) -> list[str]:
    """Why `doc` is not a valid hardware snapshot (empty when it is)."""
    from dsv4setup.preflight.schemalite import Validator

    return Validator(hardware_schema()).errors(doc)


def parse_snapshot(text: str, source: str) -> dict[str, Any]:
    """Parse and validate snapshot JSON; `source` names the file in error messages."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"snapshot {source} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                            fix=SNAPSHOT_FIX) from None
    if not isinstance(doc, dict) or doc.get("schema") != HARDWARE_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise SnapshotError(f"snapshot {source} is not a dsv4setup hardware snapshot: schema is {found!r}, "
                            f"expected {HARDWARE_SCHEMA!r}", fix=SNAPSHOT_FIX)
    problems = snapshot_errors(doc)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise SnapshotError(f"snapshot {source} is not a valid {HARDWARE_SCHEMA} document: "
                            f"{'; '.join(problems[:3])}{more}", fix=SNAPSHOT_FIX)
    return doc


def load_snapshot(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {path} does not exist", fix=SNAPSHOT_FIX) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"snapshot {path} cannot be read: {exc}", fix=SNAPSHOT_FIX) from None
    return parse_snapshot(text, str(path))


def save_snapshot(path: Path, doc: dict[str, Any]) -> None:
    from dsv4setup.core.fsutil import atomic_write_json

    atomic_write_json(path, doc)
