"""Shared by the runbook benchmarks: a finished cpu-tiny workdir and the dsv4setup CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def cli_env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "DSV4SETUP_WORKDIR": str(workdir), "NO_COLOR": "1"}


def dsv(workdir: Path, *args: str, timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess[str]]:
    """(wall seconds, result) of `dsv4setup ARGS` on the workdir; exits on failure."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dsv4setup", *args], env=cli_env(workdir), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dsv4setup {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, proc


def finished_workdir(workdir: Path) -> float:
    """Run `up --profile cpu-tiny` to the end (a no-op when it is finished already); its wall seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    elapsed, _ = dsv(workdir, "up", "--profile", "cpu-tiny", "--yes")
    return elapsed
