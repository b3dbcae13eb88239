"""GPU architecture names: compute capability -> nvcc `-arch` -> TORCH_CUDA_ARCH_LIST, and
which CUDA release compiles for which target (data in `arches.yaml`)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ARCH_TABLE_FILE = Path(__file__).with_name("arches.yaml")
_ARCH_RE = re.compile(r"^sm_(\d+)(\d)([af]?)$")
_CC_RE = re.compile(r"^\s*(\d+)\.(\d)\s*$")
# Keys under which a preflight snapshot may already name the nvcc target.
_ARCH_KEYS = ("toolkit_arch", "nvcc_arch", "arch")
_CC_KEYS = ("compute_capability", "cuda_compute_capability", "cc")

Release = tuple[int, int]


def parse_release(text: str) -> Release:
    """'13.0.2' or '13.0' -> (13, 0)."""
    parts = text.strip().split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        raise ValueError(f"not a CUDA release: {text!r} (expected MAJOR.MINOR[.PATCH])")
    return int(parts[0]), int(parts[1])


def is_arch(text: object) -> bool:
    return isinstance(text, str) and _ARCH_RE.match(text) is not None


def arch_from_capability(cc: object) -> str:
    """Compute capability -> nvcc target: '12.0' -> 'sm_120a', (9, 0) -> 'sm_90a', '8.6' -> 'sm_86'.

    Hopper and later get the arch-specific 'a' variant (what vLLM's kernels need); older GPUs
    have none.
    """
    major, minor = _capability(cc)
    return f"sm_{major}{minor}{'a' if major >= 9 else ''}"


def _capability(cc: object) -> Release:
    if isinstance(cc, float):  # 12.1 from a JSON number
        cc = f"{cc:.1f}"
    if isinstance(cc, str) and (m := _CC_RE.match(cc)):
        return int(m.group(1)), int(m.group(2))
    if isinstance(cc, list | tuple) and len(cc) == 2 and all(isinstance(x, int) for x in cc):
        return int(cc[0]), int(cc[1])
    if isinstance(cc, Mapping) and isinstance(cc.get("major"), int) and isinstance(cc.get("minor"), int):
        return int(cc["major"]), int(cc["minor"])
    raise ValueError(f"not a compute capability: {cc!r} (expected '12.0', 12.0, [12, 0] or {{major, minor}})")


def torch_arch_list(arch: str) -> str:
    """nvcc target -> TORCH_CUDA_ARCH_LIST entry: 'sm_120a' -> '12.0a', 'sm_86' -> '8.6'."""
    m = _ARCH_RE.match(arch)
    if not m:
        raise ValueError(f"not an nvcc arch: {arch!r} (expected e.g. sm_120a)")
    return f"{int(m.group(1))}.{m.group(2)}{m.group(3)}"


def arches_from_preflight(outputs: Mapping[str, Any]) -> list[str]:
    """Every distinct nvcc target the preflight outputs name, in the order found.

    The preflight step's snapshot layout belongs to that step, so this reads it defensively:
    an explicit target under toolkit_arch/nvcc_arch/arch wins; otherwise every
    compute_capability found anywhere in the nested document (one per GPU) is converted.
    """
    for key in _ARCH_KEYS:
        if is_arch(outputs.get(key)):
            return [str(outputs[key])]
    found: list[str] = []
    for cc in _capabilities(outputs):
        try:
            arch = arch_from_capability(cc)
        except ValueError:
            continue
        if arch not in found:
            found.append(arch)
    return found


def _capabilities(doc: object) -> Iterator[object]:
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            if key in _CC_KEYS:
                yield value
            else:
                yield from _capabilities(value)
    elif isinstance(doc, list | tuple):
        for item in doc:
            yield from _capabilities(item)


@dataclass(frozen=True)
class ArchSupport:
    min_cuda: Release
    max_cuda: Release | None


@cache
def arch_table() -> dict[str, ArchSupport]:
    raw = yaml.safe_load(ARCH_TABLE_FILE.read_text(encoding="utf-8"))
    return {arch: ArchSupport(parse_release(v["min_cuda"]),
                              parse_release(v["max_cuda"]) if v.get("max_cuda") else None)
            for arch, v in raw.items()}


def fmt(release: Release) -> str:
    return f"{release[0]}.{release[1]}"


def support_fix(arch: str, have: Release | None) -> str:
    """Why an nvcc of release `have` may fail to compile for `arch`, and what to use instead."""
    support = arch_table().get(arch)
    if support is None:
        return (f"{arch} is not a known nvcc target (table: {ARCH_TABLE_FILE}); check the spelling "
                f"(e.g. sm_120a, sm_121a, sm_90a, sm_100a) and set toolkit.arch")
    if have is None:
        return f"{arch} needs CUDA >= {fmt(support.min_cuda)}; set toolkit.version accordingly"
    if have < support.min_cuda:
        return (f"{arch} needs CUDA >= {fmt(support.min_cuda)} but this nvcc is {fmt(have)}: set "
                f"toolkit.version to a {fmt(support.min_cuda)} or newer release (e.g. 13.0.2)")
    if support.max_cuda is not None and have > support.max_cuda:
        return (f"{arch} was dropped after CUDA {fmt(support.max_cuda)} and this nvcc is {fmt(have)}: "
                f"set toolkit.version to a {fmt(support.max_cuda)}.x release")
    return (f"nvcc {fmt(have)} should support {arch}; read the compiler output in the log "
            f"(a mixed toolkit, e.g. an nvvm from another release, breaks ptxas)")
