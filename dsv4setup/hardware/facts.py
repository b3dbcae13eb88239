"""Read-only views over a hardware snapshot document, shared by checks and profile matching."""

from __future__ import annotations

from typing import Any

Snapshot = dict[str, Any]
Gpu = dict[str, Any]


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def cc_str(gpu: Gpu) -> str | None:
    """[12, 0] -> "12.0"; None when NVML did not say."""
    cc = gpu.get("compute_capability")
    return f"{cc[0]}.{cc[1]}" if cc else None


def gpu_label(gpu: Gpu) -> str:
    return gpu.get("name") or f"GPU {gpu.get('index')} (name unknown)"


def visible_gpus(snap: Snapshot) -> list[Gpu]:
    """The GPUs a server started from this shell would see (CUDA_VISIBLE_DEVICES by index or UUID)."""
    gpus: list[Gpu] = list(snap.get("gpus") or [])
    mask = (snap.get("host") or {}).get("cuda_visible_devices")
    if mask is None:
        return gpus
    chosen: list[Gpu] = []
    for token in (t.strip() for t in mask.split(",")):
        if not token:
            continue
        match = [g for g in gpus if str(g.get("index")) == token or (g.get("uuid") or "").startswith(token)]
        if not match:
            break  # CUDA stops at the first invalid entry
        chosen.extend(g for g in match if g not in chosen)
    return chosen


def tp_group(snap: Snapshot, size: int) -> list[Gpu]:
    """The GPUs of a tensor-parallel group of `size` on this node: the first visible ones."""
    return visible_gpus(snap)[:size]


def link(snap: Snapshot, a: int, b: int) -> dict[str, Any] | None:
    lo, hi = min(a, b), max(a, b)
    return next((x for x in snap.get("links") or [] if x.get("a") == lo and x.get("b") == hi), None)


def group_links(snap: Snapshot, gpus: list[Gpu]) -> list[tuple[int, int, dict[str, Any] | None]]:
    idx = [g["index"] for g in gpus]
    return [(a, b, link(snap, a, b)) for i, a in enumerate(idx) for b in idx[i + 1:]]


def is_nvlink(entry: dict[str, Any] | None) -> bool:
    return entry is not None and (entry.get("nvlink", 0) > 0 or str(entry.get("topology", "")).startswith("NV"))


def interconnect(snap: Snapshot, gpus: list[Gpu]) -> str:
    """How the GPUs of a group talk: nvlink (every pair), c2c (Grace-coupled GPUs), else pcie; none: no GPU."""
    if not gpus:
        return "none"
    pairs = group_links(snap, gpus)
    if pairs and all(is_nvlink(entry) for _, _, entry in pairs):
        return "nvlink"
    if all(g.get("c2c") for g in gpus):
        return "c2c"
    return "pcie"


def memory_bytes(snap: Snapshot, gpu: Gpu, unified_uses_host_ram: bool = True) -> tuple[int | None, bool]:
    """(usable bytes, unified). NVML reports no framebuffer size on unified-memory GPUs (GB10):
    their memory is the host RAM."""
    total = gpu.get("memory_total_bytes")
    if total is not None:
        return int(total), False
    ram = (snap.get("host") or {}).get("ram_bytes")
    if unified_uses_host_ram and ram is not None:
        return int(ram), True
    return None, False


def nvml_started(snap: Snapshot) -> bool:
    return snap.get("driver") is not None
