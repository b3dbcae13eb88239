"""What a result row was measured with: the fingerprint that makes two matrices comparable.

"Matched" means same vLLM (version and commit), same applied fixes, same checkpoint revision,
same profile with the same overrides, same workload. `hardware`, `driver` and `date` say
where and when; they are expected to differ between two machines and are left out of the
comparison (see compare.py). The number of speculative tokens is the row's own `k`, never
part of the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from dsv4setup.bench.client import VllmInfo
from dsv4setup.bench.datasets import RANDOM, PromptSet
from dsv4setup.bench.matrix import TEMPERATURE, Shape
from dsv4setup.core.errors import DsvError
from dsv4setup.profiles.model import Profile
from dsv4setup.serve.guard import GUARD_MIDDLEWARE, is_guard_dir

WHERE_AND_WHEN = ("hardware", "driver", "date")  # the keys compare.py does not hold against a match
# values that do not change what is measured: where the server listens, and k (the row's own key)
# (paths differ between machines: the checkpoint part says which weights, the vllm part which build)
NOT_MEASURED_KEYS = ("spec.num_speculative_tokens", "serve.host", "serve.port", "serve.ready_timeout_s",
                     "serve.stall_timeout_s", "smoke.", "bench.", "description", "source", "verified", "match.",
                     "env.VLLM_CACHE_ROOT", "model.local_path", "vllm.python")
NOT_MEASURED_FLAGS = ("--model", "--host", "--port", "--speculative-config", "--served-model-name",
                      "--hf-config-path")  # paths and addresses differ between machines; k is the row's key


def vllm_part(info: VllmInfo, step_outputs: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM as the serving venv reports it; the vllm step's record fills what the venv cannot say."""
    return {"package": info.dist or step_outputs.get("package"),
            "version": info.version or step_outputs.get("version"),
            "commit": info.commit or step_outputs.get("git_commit"),
            "install_route": step_outputs.get("route"),
            "bench_runner": info.runner}


def patches_part(profile: Profile, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The fixes: what the profile asks for, what the patches step applied or found upstream, and the diff
    in effect per patch (one sha256, or null: upstream, or a patches record older than this field)."""
    applied = sorted(outputs.get("applied") or [])
    recorded = outputs.get("diff_sha256") or {}
    return {"requested": sorted(profile.patches), "applied": applied,
            "upstream": sorted(outputs.get("upstream") or []),
            "diff_sha256": {pid: recorded.get(pid) for pid in applied},
            "recorded": bool(outputs)}


def checkpoint_part(profile: Profile, outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The weights: repo and the revision actually downloaded (a commit), or the local/generated source."""
    model = profile.model
    part: dict[str, Any] = {"repo": model.repo, "revision": outputs.get("revision") or model.revision,
                            "requested_revision": model.revision if model.repo else None,
                            "route": outputs.get("route") or ("generate" if model.generate else
                                                              "local" if model.local_path else "repo")}
    if model.generate:
        part["generator"] = model.generate
        part["generator_source"] = inputs.get("generator_source")
        part["revision"] = None
        part["requested_revision"] = None
    return part


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and empty mappings are leaves."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _measured(key: str) -> bool:
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_MEASURED_KEYS)


def profile_overrides(profile: Profile, base: Profile | None) -> dict[str, Any] | None:
    """Every measured value that differs from the profile file (with its preset), wherever it was set:
    dsv4setup.yaml, --set or --host. None when the profile file cannot be found."""
    if base is None:
        return None
    now, was = flatten(profile.document()), flatten(base.with_preset().document())
    return {k: now.get(k) for k in sorted(set(now) | set(was)) if now.get(k) != was.get(k) and _measured(k)}


def base_profile(profile: Profile, source_file: Path | None, workdir: Any) -> Profile | None:
    """The profile as its file says (no overrides): the file given, else the profile found by name, else
    (a derived profile has no file) the one derived from the snapshot the preflight step judged."""
    from dsv4setup.profiles.derive import is_derived_name
    from dsv4setup.profiles.loader import find_profile_file, load_profile_file

    try:
        path = source_file or find_profile_file(profile.name, workdir)
    except DsvError:
        return _derived_base(profile.name, workdir) if is_derived_name(profile.name) else None
    try:
        return load_profile_file(path)
    except DsvError:
        return None


def _derived_base(name: str, workdir: Any) -> Profile | None:
    """The derived profile of this name, derived again from the workdir's hardware.json (None: not that one)."""
    from dsv4setup.preflight.snapshot import SNAPSHOT_FILE, load_snapshot
    from dsv4setup.profiles.derive import derive_for

    snapshot = Path(workdir.root) / SNAPSHOT_FILE
    try:
        derived = derive_for(load_snapshot(snapshot)).profile if snapshot.exists() else None
    except DsvError:
        return None
    return derived if derived is not None and derived.name == name else None


def serve_args(argv: list[str]) -> list[str]:
    """The server's arguments that shape the measurement: no interpreter, paths, address, key guard, or k."""
    args, skip = [], False
    rest = argv[3:]  # python -m module
    for index, arg in enumerate(rest):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in NOT_MEASURED_FLAGS:
            skip = "=" not in arg
            continue
        if _is_guard(rest, index):  # it follows the address (serve/guard.py)
            skip = arg == "--middleware"
            continue
        args.append(arg)
    return args


def _is_guard(args: list[str], index: int) -> bool:
    arg = args[index]
    return arg == f"--middleware={GUARD_MIDDLEWARE}" or (
        arg == "--middleware" and index + 1 < len(args) and args[index + 1] == GUARD_MIDDLEWARE)


def measured_env(env: Mapping[str, str]) -> dict[str, str]:
    """The server's environment without the key, the cache path and the key guard's directory on PYTHONPATH."""
    kept = {k: v for k, v in sorted(env.items()) if k not in ("VLLM_API_KEY", "VLLM_CACHE_ROOT")}
    path = [p for p in kept.get("PYTHONPATH", "").split(":") if p and not is_guard_dir(p)]
    if "PYTHONPATH" in kept:
        if path:
            kept["PYTHONPATH"] = ":".join(path)
        else:
            del kept["PYTHONPATH"]
    return kept


def profile_part(profile: Profile, base: Profile | None, argv: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    overrides = profile_overrides(profile, base)
    return {"name": profile.name, "derived": profile.derived, "verified": profile.verified, "overrides": overrides,
            "overrides_known": overrides is not None,
            "serve_args": serve_args(argv),
            "env": measured_env(env)}


def workload_part(shape: Shape, seed: int, prompts: PromptSet | None = None) -> dict[str, Any]:
    """The prompts (random at the shape's lengths, or a prompt set by name and sha256), lengths and sampling."""
    if prompts is None:
        return {"dataset": RANDOM, "dataset_sha256": None, "input_len": shape.input_len,
                "output_len": shape.output_len, "num_prompts": shape.num_prompts, "seed": seed,
                "temperature": TEMPERATURE, "ignore_eos": True}
    return {"dataset": prompts.name, "dataset_sha256": prompts.sha256, "input_len": None,
            "output_len": shape.output_len, "num_prompts": len(prompts.prompts), "seed": seed,
            "temperature": TEMPERATURE, "ignore_eos": True}


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def probe_hardware(nvml: ModuleType | None = None) -> dict[str, Any]:
    """A fresh, quick probe for the summary: NVML (driver, GPUs, links) and the host's CPU and memory."""
    from dsv4setup.preflight.host_facts import cpu_count, ram_bytes
    from dsv4setup.preflight.nvml import probe_nvml

    facts = probe_nvml(nvml)
    return {"driver": facts.driver, "gpus": facts.gpus, "links": facts.links,
            "host": {"arch": platform.machine(), "cpu_count": cpu_count(), "ram_bytes": ram_bytes(),
                     "cpu_model": cpu_model()}}


def hardware_part(snapshot: Mapping[str, Any], tensor_parallel_size: int) -> dict[str, Any]:
    """GPU names and SM of the serving group, how they are linked, and the host (from a hardware snapshot)."""
    from dsv4setup.hardware.facts import cc_str, gpu_label, interconnect, tp_group, visible_gpus

    snap = dict(snapshot)
    group = tp_group(snap, tensor_parallel_size)
    host = snap.get("host") or {}
    ram = host.get("ram_bytes")
    return {"gpus": [{"name": gpu_label(g), "sm": cc_str(g)} for g in group],
            "gpus_visible": len(visible_gpus(snap)), "interconnect": interconnect(snap, group),
            "host": {"arch": host.get("arch"), "cpu_model": host.get("cpu_model"), "cpu_count": host.get("cpu_count"),
                     "ram_gib": round(ram / 2**30) if ram else None}}


def driver_part(snapshot: Mapping[str, Any]) -> dict[str, Any] | None:
    driver = snapshot.get("driver")
    return {"version": driver.get("version"), "cuda": driver.get("cuda_driver")} if driver else None


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def digest(part: Any) -> str:
    """A short hash of a fingerprint part (to name a setup in reports)."""
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:12]


def matched_part(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint without where and when: equal for two rows measured with the same setup."""
    return {k: v for k, v in fingerprint.items() if k not in WHERE_AND_WHEN}
