"""Is a doctor verdict consistent with the hardware it judged? Rules stated from the hardware
facts alone (field notes §2), independent of the rules engine, so a live GPU machine's snapshot
and the real-* fixtures captured there can be judged without a verdict written by hand."""

from __future__ import annotations

from typing import Any

ONE_GPU_FIT_BYTES = 160e9  # weights (~145-160 GB) + KV + overhead: one GPU below this cannot hold them
TWO_GPU_FIT_BYTES = 90e9  # two GPUs of at least this much can (2x 96 GB is the smallest reported TP=2)


def _cc(gpu: dict[str, Any]) -> tuple[int, int] | None:
    cc = gpu.get("compute_capability")
    return (int(cc[0]), int(cc[1])) if cc else None


def verdict_problems(snapshot: dict[str, Any], doctor: dict[str, Any]) -> list[str]:
    """What in a `dsv4setup.doctor/1` document (judged without a profile) contradicts `snapshot`."""
    checks = {c["id"]: c for c in doctor["checks"]}
    gpus = snapshot.get("gpus") or []
    problems = [f"{c['id']} is {c['status']} without a fix" for c in doctor["checks"]
                if c["status"] in ("warn", "fail") and not c.get("fix")]
    if doctor["ok"] != all(c["status"] != "fail" for c in doctor["checks"]):
        problems.append(f"ok is {doctor['ok']} but the failed checks say otherwise")
    if snapshot.get("driver") and gpus and checks["gpu.present"]["status"] != "pass":
        problems.append(f"{len(gpus)} GPU(s) seen but gpu.present is {checks['gpu.present']['status']}")
    ccs = [cc for cc in map(_cc, gpus) if cc is not None]
    if ccs and checks["gpu.architecture"]["status"] != ("pass" if min(ccs) >= (9, 0) else "fail"):
        problems.append(f"SM {min(ccs)} but gpu.architecture is {checks['gpu.architecture']['status']}")
    memory_bytes = gpus[0].get("memory_total_bytes") if len(gpus) == 1 else None
    if memory_bytes and memory_bytes < ONE_GPU_FIT_BYTES:
        memory, tp = checks["gpu.memory"], "TP=2" if memory_bytes >= TWO_GPU_FIT_BYTES else "TP="
        if memory["status"] != "fail" or tp not in (memory.get("fix") or ""):
            problems.append(f"one {gpus[0].get('name')} of {memory_bytes / 1e9:.1f} GB: gpu.memory should fail "
                            f"with a more-GPU fix ({tp}), got {memory['status']}: {memory.get('fix')}")
    rec = doctor.get("recommendation")
    supported = bool(ccs) and min(ccs) >= (9, 0)  # below SM 9.0 nothing can be recommended (gpu.architecture)
    if supported and (rec is None or not 1 <= rec["tensor_parallel_size"] <= max(len(gpus), 2)):
        problems.append(f"no usable recommendation for {len(gpus)} GPU(s): {rec}")
    return problems
