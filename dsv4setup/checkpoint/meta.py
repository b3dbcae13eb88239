"""Checkpoint metadata, read without the weights: config.json, the index, each shard's header.

A safetensors file starts with an 8-byte little-endian header length N, then N bytes of JSON
({tensor: {dtype, shape, data_offsets}}), then the data. Locally we read exactly those bytes;
remotely `remote.py` asks huggingface_hub, which fetches them with HTTP Range requests.
Both produce a `CheckpointMeta`, the only input of the (pure) lint.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # a DeepSeek shard header is well under 1 MB

# Bytes per element; packed 4/6-bit types count fractions.
DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "F4": 0.5, "F6_E2M3": 0.75,
    "F6_E3M2": 0.75, "C64": 8,
}


@dataclass(frozen=True)
class TensorMeta:
    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]


@dataclass
class ShardMeta:
    name: str
    exists: bool
    size: int | None = None  # file size in bytes, when known
    header_bytes: int = 0  # 8 + JSON length
    tensors: dict[str, TensorMeta] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)  # names written twice in the header JSON
    error: str | None = None  # the header could not be read or is inconsistent


@dataclass
class CheckpointMeta:
    source: str  # a path, or repo@revision
    kind: Literal["local", "remote"]
    files: dict[str, int | None]  # every file of the checkpoint (top level) -> size
    config: dict[str, Any] | None = None
    config_error: str | None = None
    index: bool = False  # True: sharded with model.safetensors.index.json
    weight_map: dict[str, str] | None = None
    index_error: str | None = None
    index_duplicates: list[str] = field(default_factory=list)
    listed: list[str] = field(default_factory=list)  # the shards vLLM loads (named by the index)
    orphans: list[str] = field(default_factory=list)  # *.safetensors present but not named by the index
    shards: dict[str, ShardMeta] = field(default_factory=dict)  # listed + orphans
    revision: str | None = None
    commit: str | None = None

    def loaded_tensors(self) -> dict[str, list[str]]:
        """Tensor name -> the listed shards whose header has it (what vLLM would load)."""
        where: dict[str, list[str]] = {}
        for name in self.listed:
            shard = self.shards.get(name)
            for tensor in shard.tensors if shard else ():
                where.setdefault(tensor, []).append(name)
        return where


class _DuplicateKeys(dict[str, Any]):
    """json object_pairs_hook result that remembers keys written more than once."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _DuplicateKeys:
    out = _DuplicateKeys()
    out.duplicates = []
    for key, value in pairs:
        if key in out:
            out.duplicates.append(key)
        out[key] = value
    return out


def loads_checking_duplicates(text: str | bytes) -> _DuplicateKeys:
    doc = json.loads(text, object_pairs_hook=_pairs_hook)
    if not isinstance(doc, _DuplicateKeys):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    return doc


def tensors_from_header(header: dict[str, Any]) -> dict[str, TensorMeta]:
    """Validate a decoded safetensors header into TensorMeta; raises ValueError on a malformed entry."""
    tensors: dict[str, TensorMeta] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
            tensors[name] = TensorMeta(str(dtype), tuple(int(d) for d in shape), (int(offsets[0]), int(offsets[1])))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"tensor {name!r}: malformed header entry ({exc})") from None
    return tensors


def header_problem(tensors: dict[str, TensorMeta], header_bytes: int, file_size: int | None) -> str | None:
    """What is wrong with a parsed header (sizes, offsets), or None. Pure, used locally and remotely."""
    end = 0
    for name, t in tensors.items():
        start, stop = t.offsets
        if start < 0 or stop < start:
            return f"tensor {name!r}: invalid data_offsets {list(t.offsets)}"
        per = DTYPE_BYTES.get(t.dtype)
        if per is not None:
            expected = math.ceil(math.prod(t.shape) * per)
            if stop - start != expected:
                return (f"tensor {name!r}: {t.dtype}{list(t.shape)} needs {expected} bytes, "
                        f"data_offsets span {stop - start}")
        end = max(end, stop)
    if file_size is not None and header_bytes + end > file_size:
        return (f"truncated: the header places data up to byte {header_bytes + end}, "
                f"the file has {file_size} bytes")
    return None


def read_local_header(path: Path) -> ShardMeta:
    """Read only the 8-byte length and the JSON header of a local safetensors file."""
    shard = ShardMeta(path.name, exists=path.is_file())
    if not shard.exists:
        return shard
    shard.size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                shard.error = f"file too small for a safetensors header ({shard.size} bytes)"
                return shard
            (length,) = struct.unpack("<Q", raw_len)
            if length > MAX_HEADER_BYTES or 8 + length > shard.size:
                shard.error = f"header length {length} does not fit the file ({shard.size} bytes): not safetensors"
                return shard
            raw = fh.read(length)
        header = loads_checking_duplicates(raw)
        shard.tensors = tensors_from_header(header)
        shard.duplicates = list(header.duplicates)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        shard.error = f"header does not parse: {exc}"
        return shard
    shard.header_bytes = 8 + length
    shard.error = header_problem(shard.tensors, shard.header_bytes, shard.size)
    return shard


def parse_config(text: str | bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"config.json does not parse: {exc}"
    if not isinstance(doc, dict):
        return None, "config.json is not a JSON object"
    return doc, None


def apply_index(meta: CheckpointMeta, text: str | bytes) -> None:
    """Fill weight_map / listed / index_error from the index JSON text."""
    meta.index = True
    try:
        doc = loads_checking_duplicates(text)
        weight_map = doc.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("no 'weight_map' object of tensor -> file name")
    except (ValueError, UnicodeDecodeError) as exc:
        meta.index_error = f"{INDEX_FILE} does not parse: {exc}"
        return
    meta.weight_map = dict(weight_map)
    meta.index_duplicates = list(getattr(weight_map, "duplicates", []))
    meta.listed = sorted(set(weight_map.values()))


def plan_shards(meta: CheckpointMeta) -> None:
    """Decide which files are shards: the index's, or the single model.safetensors; the rest are orphans."""
    safetensors = sorted(n for n in meta.files if n.endswith(".safetensors") and "/" not in n)
    if INDEX_FILE in meta.files:
        pass  # listed came from apply_index (empty when the index is corrupt)
    elif SINGLE_FILE in meta.files:
        meta.listed = [SINGLE_FILE]
    else:
        meta.index_error = f"neither {INDEX_FILE} nor {SINGLE_FILE} is present"
    meta.orphans = [n for n in safetensors if n not in meta.listed] if not meta.index_error else []


def read_local(path: Path) -> CheckpointMeta:
    """Metadata of a checkpoint directory (headers only, a few MB however large the weights)."""
    path = Path(path)
    files: dict[str, int | None] = ({p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
                                    if path.is_dir() else {})
    meta = CheckpointMeta(source=str(path), kind="local", files=files)
    if not path.is_dir():
        meta.config_error = f"{path} is not a directory"
        meta.index_error = meta.config_error
        return meta
    if CONFIG_FILE in files:
        meta.config, meta.config_error = parse_config((path / CONFIG_FILE).read_bytes())
    else:
        meta.config_error = f"no {CONFIG_FILE} in {path}"
    if INDEX_FILE in files:
        apply_index(meta, (path / INDEX_FILE).read_bytes())
    plan_shards(meta)
    for name in [*meta.listed, *meta.orphans]:
        meta.shards[name] = read_local_header(path / name)
    return meta


def header_bytes_total(shards: Iterable[ShardMeta]) -> int:
    return sum(s.header_bytes for s in shards)
