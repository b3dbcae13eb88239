"""`--fix`: a corrected config.json copy for `vllm serve --hf-config-path`, never an in-place edit.

vLLM reads the model config (and the generation config, and remote code named by `auto_map`)
from `--hf-config-path` when given; weights and tokenizer still come from the checkpoint
directory. So the copy holds config.json plus those small files, and a provenance note.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4setup.checkpoint.names import IgnoreFix, corrected_config
from dsv4setup.core.fsutil import atomic_write_text, contained, fsync_dir, fsync_file

CONFIG_DIR_NAME = "checkpoint-config"
FIX_NOTE = "dsv4setup-fix.json"
FIX_SCHEMA = "dsv4setup.checkpoint-fix/1"

FileReader = Callable[[str], bytes | None]  # small file of the checkpoint by name, None when absent


@dataclass(frozen=True)
class FixResult:
    hf_config_path: Path
    files: list[str]
    changes: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"hf_config_path": str(self.hf_config_path), "files": self.files, "changes": self.changes}


def companion_files(config: dict[str, Any]) -> list[str]:
    """Small files vLLM reads from the config path besides config.json."""
    names = ["generation_config.json"]
    auto_map = config.get("auto_map")
    if isinstance(auto_map, dict):
        for ref in auto_map.values():
            for item in ref if isinstance(ref, list) else [ref]:
                if isinstance(item, str) and "." in item:
                    module = item.split("--")[-1].rsplit(".", 1)[0]
                    names.append(f"{module}.py")
    return sorted(set(names))


def local_reader(checkpoint: Path) -> FileReader:
    def read(name: str) -> bytes | None:
        path = contained(checkpoint, name, f"the auto_map of {checkpoint}/config.json")
        return path.read_bytes() if path.is_file() else None

    return read


def write_config_copy(out_dir: Path, config: dict[str, Any], fixes: list[IgnoreFix], read: FileReader,
                      source: str) -> FixResult:
    """Write the corrected config and its companions into out_dir, replacing an older copy whole."""
    new_config = corrected_config(config, fixes)
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    names = {name: contained(staging, name, f"the auto_map of {source}'s config.json")
             for name in companion_files(config)}  # all checked before anything is written
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    written: list[str] = []
    for name, path in names.items():
        data = read(name)
        if data is not None:
            path.write_bytes(data)
            fsync_file(path)
            written.append(name)
    changes = [fix.to_dict() for fix in fixes]
    atomic_write_text(staging / FIX_NOTE, json.dumps({"schema": FIX_SCHEMA, "source": source,
                                                     "changes": changes}, indent=2) + "\n")
    atomic_write_text(staging / "config.json", json.dumps(new_config, indent=2) + "\n")
    written = ["config.json", *written, FIX_NOTE]
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
    fsync_dir(out_dir.parent)
    return FixResult(out_dir, written, changes)


def read_fix_note(out_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((out_dir / FIX_NOTE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == FIX_SCHEMA else None
