"""GPU memory a deployment needs, and what these GPUs give it (GB = 10^9 bytes; sizes in rules.yaml `memory`)."""

from __future__ import annotations

from dsv4setup.hardware.facts import Gpu, Snapshot, memory_bytes
from dsv4setup.hardware.rules import GB, Rules


def kv_gb(rules: Rules, max_model_len: int) -> float:
    return rules.memory.kv_gb_per_million_tokens * max_model_len / 1_000_000


def need_gb(rules: Rules, checkpoint_gb: float, max_model_len: int, gpus: int) -> float:
    """GPU memory the deployment needs in total: weights, KV for one full-length sequence, overhead."""
    return checkpoint_gb + kv_gb(rules, max_model_len) + rules.memory.overhead_per_gpu_gb * gpus


def usable_gb(snap: Snapshot, gpus: list[Gpu], utilization: float, rules: Rules) -> float | None:
    """What vLLM may use on these GPUs: the smallest one (TP splits evenly) x count x utilisation."""
    sizes = [memory_bytes(snap, g, rules.memory.unified_memory_uses_host_ram)[0] for g in gpus]
    if not sizes or any(s is None for s in sizes):
        return None
    return min(s for s in sizes if s is not None) / GB * len(sizes) * utilization
