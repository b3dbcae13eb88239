"""The doctor's facts and thresholds, read from rules.yaml (data, not code)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

RULES_FILE = Path(__file__).with_name("rules.yaml")
GB = 1_000_000_000

_NUM_RE = re.compile(r"\d+")


def vtuple(version: str | None) -> tuple[int, ...]:
    """"0.33.0+cu130" -> (0, 33, 0); "580.126.09" -> (580, 126, 9); "" or None -> ()."""
    if not version:
        return ()
    release = re.split(r"[+\-\s]", str(version).strip(), maxsplit=1)[0]
    parts: list[int] = []
    for piece in release.split("."):
        match = _NUM_RE.match(piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


@dataclass(frozen=True)
class Arch:
    family: str
    gpus: str


@dataclass(frozen=True)
class Memory:
    checkpoint_gb: float
    kv_gb_per_million_tokens: float
    default_max_model_len: int
    overhead_per_gpu_gb: float
    default_gpu_memory_utilization: float
    unified_memory_uses_host_ram: bool


@dataclass(frozen=True)
class DriverBuild:
    vllm_min: str
    cuda: str
    driver_min: str
    why: str


@dataclass(frozen=True)
class HostLimits:
    shm_fail_below_gb: float
    shm_warn_below_gb: float
    ram_fail_below_gb: float
    ram_warn_below_gb: float
    disk_venv_gb: float
    disk_toolkit_gb: float
    disk_source_build_gb: float
    disk_margin_gb: float
    disk_install_cache_gb: float
    hf_cache_warn_below_gb: float
    checkpoint_gb: float | None = None
    disk_generation_gb: float = 0.0  # one more serving venv generation beside the current one (`upgrade`)


@dataclass(frozen=True)
class SpecFamily:
    default: int
    allowed: tuple[int, ...]
    allowed_from: dict[str, tuple[int, ...]]
    why: str

    def allowed_for(self, vllm_version: str | None) -> tuple[int, ...]:
        """The k values allowed with this vLLM version (the newest `allowed_from` row it reaches)."""
        have = vtuple(vllm_version)
        best: tuple[int, ...] = self.allowed
        for since, values in sorted(self.allowed_from.items(), key=lambda kv: vtuple(kv[0])):
            if have and have >= vtuple(since):
                best = values
        return best


@dataclass(frozen=True)
class Finding:
    serve_args: tuple[str, ...]
    env: dict[str, str]
    why: str
    advice: str | None
    env_before_vllm: dict[str, dict[str, str]] = field(default_factory=dict)

    def env_for(self, vllm_version: str | None) -> dict[str, str]:
        """The variables to set for this vLLM version (None: unknown, the newest rules apply)."""
        env = dict(self.env)
        have = vtuple(vllm_version)
        for before, extra in self.env_before_vllm.items():
            if have and have < vtuple(before):
                env.update(extra)
        return env


@dataclass(frozen=True)
class ServeArgRule:
    flag: str
    only_families: tuple[str, ...]
    status: str
    why: str


@dataclass(frozen=True)
class Rules:
    archs: dict[str, Arch]
    min_supported_cc: str
    unsupported_why: str
    memory: Memory
    tp_sizes: tuple[int, ...]
    tp_warn: dict[int, str]
    driver_builds: tuple[DriverBuild, ...]
    driver_install_hint: str
    host_gpu: HostLimits
    host_cpu: HostLimits
    host_arches: tuple[str, ...]
    out_of_scope_os: dict[str, str]
    demo_arches: tuple[str, ...]
    demo_profile: str
    gcc_min_for_source_build: str
    python_min: str
    python_max_exclusive: str
    spec_default: int
    spec_families: dict[str, SpecFamily]
    findings: dict[str, Finding]
    serve_arg_rules: tuple[ServeArgRule, ...]
    enforce_eager_why: str
    default_vllm_version: str

    def family(self, cc: str | None) -> str | None:
        arch = self.archs.get(cc or "")
        return arch.family if arch else None

    def driver_build(self, vllm_version: str | None) -> DriverBuild:
        have = vtuple(vllm_version)
        for build in self.driver_builds:
            if not have or have >= vtuple(build.vllm_min):
                return build
        return self.driver_builds[-1]

    def out_of_scope(self, host: dict[str, Any]) -> str | None:
        """Why this host's OS is out of scope (macOS, Windows), None for Linux."""
        words = str(host.get("os") or "").split()
        return self.out_of_scope_os.get(words[0]) if words else None

    def host(self, cpu_only: bool) -> HostLimits:
        return self.host_cpu if cpu_only else self.host_gpu


def parse_rules(raw: dict[str, Any]) -> Rules:
    archs = raw["architectures"]
    spec = raw["speculative"]
    return Rules(
        archs={str(cc): Arch(v["family"], v["gpus"]) for cc, v in archs["supported"].items()},
        min_supported_cc=str(archs["min_supported"]),
        unsupported_why=archs["unsupported_why"],
        memory=Memory(**raw["memory"]),
        tp_sizes=tuple(raw["tensor_parallel"]["sizes"]),
        tp_warn={int(k): v for k, v in raw["tensor_parallel"].get("warn", {}).items()},
        driver_builds=tuple(DriverBuild(str(b["vllm_min"]), str(b["cuda"]), str(b["driver_min"]), b["why"])
                            for b in raw["driver"]["builds"]),
        driver_install_hint=raw["driver"]["install_hint"],
        host_gpu=HostLimits(**raw["host"]["gpu"]),
        host_cpu=HostLimits(**raw["host"]["cpu_only"]),
        host_arches=tuple(raw["host"]["arches"]),
        out_of_scope_os={str(k): " ".join(v.split()) for k, v in raw["host"]["out_of_scope_os"].items()},
        demo_arches=tuple(raw["host"]["demo_arches"]),
        demo_profile=str(raw["host"]["demo_profile"]),
        gcc_min_for_source_build=str(raw["toolchain"]["gcc_min_for_source_build"]),
        python_min=str(raw["python"]["min"]),
        python_max_exclusive=str(raw["python"]["max_exclusive"]),
        spec_default=int(spec["default"]),
        spec_families={name: SpecFamily(int(f["default"]), tuple(f["allowed"]),
                                        {str(k): tuple(v) for k, v in f.get("allowed_from", {}).items()},
                                        " ".join(f["why"].split()))
                       for name, f in spec["families"].items()},
        findings={name: Finding(tuple(f.get("serve_args", ())), {k: str(v) for k, v in f.get("env", {}).items()},
                                " ".join(f["why"].split()), f.get("advice"),
                                {str(v): {k: str(x) for k, x in env.items()}
                                 for v, env in f.get("env_before_vllm", {}).items()})
                  for name, f in raw["findings"].items()},
        serve_arg_rules=tuple(ServeArgRule(r["flag"], tuple(r["only_families"]), r["status"], r["why"])
                              for r in raw["serve_arg_rules"]),
        enforce_eager_why=raw["enforce_eager_why"],
        default_vllm_version=str(raw["default_vllm_version"]),
    )


@cache
def load_rules(path: Path = RULES_FILE) -> Rules:
    from dsv4setup.core.yamlfast import safe_load  # yaml only when read: doctor starts often

    return parse_rules(safe_load(path.read_text(encoding="utf-8")))


def rules_digest(path: Path = RULES_FILE) -> str:
    """Changes to the rules re-run the preflight step (it fingerprints this)."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
