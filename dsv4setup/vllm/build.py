"""Environment of vLLM builds (pure): precompiled python-only builds and full CUDA source builds."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

RAM_PER_JOB_GB = 8  # one nvcc job on vLLM's kernels can take several GB
_NINJA_RE = re.compile(r"^\[(\d+)/(\d+)\]")
_WHEEL_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-[^-]+-[^-]+-[^-]+\.whl$")
_RELEASE_RE = re.compile(r"^(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class BuildMachine:
    cores: int
    ram_gb: float

    @classmethod
    def detect(cls) -> BuildMachine:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        return cls(cores, psutil.virtual_memory().total / 2**30)


def max_jobs(cores: int, ram_gb: float) -> int:
    """Parallel compile jobs: one per core, at most one per RAM_PER_JOB_GB of memory, at least 1."""
    return max(1, min(cores, int(ram_gb // RAM_PER_JOB_GB)))


def arch_entries(arch_list: str) -> list[str]:
    return [a for a in re.split(r"[;\s,]+", arch_list) if a]


def nvcc_threads(arch_list: str, jobs: int) -> int:
    """nvcc's --threads parallelises over targets only, so more threads than arches buy nothing.

    vLLM's setup.py divides MAX_JOBS by NVCC_THREADS, so jobs x threads stays within MAX_JOBS.
    """
    return max(1, min(len(arch_entries(arch_list)), jobs))


def source_build_env(cuda_home: Path, nvcc: Path, arch_list: str, machine: BuildMachine,
                     path: str | None = None) -> dict[str, str]:
    """What a full vLLM CUDA build needs on top of the environment."""
    jobs = max_jobs(machine.cores, machine.ram_gb)
    search = path if path is not None else os.environ.get("PATH", "")
    return {
        "CUDA_HOME": str(cuda_home),
        "CUDACXX": str(nvcc),
        "PATH": f"{nvcc.parent}{os.pathsep}{search}" if search else str(nvcc.parent),
        "TORCH_CUDA_ARCH_LIST": arch_list,
        "MAX_JOBS": str(jobs),
        "NVCC_THREADS": str(nvcc_threads(arch_list, jobs)),
        "VLLM_TARGET_DEVICE": "cuda",
    }


def precompiled_env(wheel: str) -> dict[str, str]:
    """Python-only build on vLLM's compiled parts from exactly this wheel (never a nightly)."""
    return {"VLLM_USE_PRECOMPILED": "1", "VLLM_PRECOMPILED_WHEEL_LOCATION": wheel}


def wheel_version(location: str) -> str | None:
    """The version in a wheel's file name (a path or URL), None when it is not a wheel name."""
    m = _WHEEL_RE.match(location.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0])
    return m.group("version") if m else None


def release_of(version: str) -> str:
    """'0.33.1.dev5+g12ab' -> '0.33.1': the numeric release a version builds on."""
    m = _RELEASE_RE.match(version)
    return m.group(1) if m else version


def version_matches(installed: str, wanted: str) -> bool:
    """Equal, or equal up to a local build label ('0.33.0+cu130' for '0.33.0')."""
    return installed == wanted or installed.split("+", 1)[0] == wanted


def constraints_text(pins: list[str]) -> str:
    return "".join(f"{pin}\n" for pin in pins)


def pinned(pins: list[str]) -> dict[str, str]:
    """name -> version for the exact `name==version` pins (normalised names)."""
    out: dict[str, str] = {}
    for pin in pins:
        name, sep, version = pin.partition("==")
        if sep and version.strip() and not any(c in version for c in "<>=!~*,;"):
            out[normalize(name)] = version.strip()
    return out


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


class BuildProgress:
    """Turns ninja's `[N/M]` lines into a progress message every `step_pct` percent."""

    def __init__(self, report: Callable[[str], None], step_pct: int = 5) -> None:
        self.report = report
        self.step_pct = step_pct
        self.last = -1
        self.total = 0

    def __call__(self, line: str) -> None:
        m = _NINJA_RE.match(line)
        if not m or int(m.group(2)) == 0:
            return
        done, total = int(m.group(1)), int(m.group(2))
        if total != self.total:  # vLLM builds several extensions, one ninja run each
            self.total, self.last = total, -1
        pct = done * 100 // total
        bucket = pct // self.step_pct
        if bucket > self.last or done == total:
            self.last = bucket
            self.report(f"building vLLM kernels: {done}/{total} ({pct}%)")


def build_env_summary(env: Mapping[str, str]) -> str:
    """The build variables worth logging (never the whole environment: it may hold tokens)."""
    keys = ("VLLM_USE_PRECOMPILED", "VLLM_PRECOMPILED_WHEEL_LOCATION", "CUDA_HOME", "CUDACXX",
            "TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "NVCC_THREADS", "VLLM_TARGET_DEVICE")
    return " ".join(f"{k}={env[k]}" for k in keys if k in env)
