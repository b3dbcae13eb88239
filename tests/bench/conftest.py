"""Fixtures of the bench tests: a workdir whose serving interpreter is the stand-in, rows, cleanup."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from dsv4setup.bench.rows import upgrade_row
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.model import BenchShape, BenchSpec, ModelSpec, Profile, ServeSpec, SmokeSpec, SpecConfig
from dsv4setup.serve.process import SERVE_ID_ENV

STANDIN = Path(__file__).with_name("standin")
FIXTURES = Path(__file__).with_name("fixtures")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def install_standin(workdir: Workdir) -> Path:
    """<workdir>/venv: a real venv whose `vllm` is the stand-in package (tests/bench/standin)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(workdir.venv_dir)], check=True)
    site = next(workdir.venv_dir.glob("lib/python*/site-packages"))
    shutil.copytree(STANDIN, site, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    return workdir.venv_python


def standin_profile(*, k: int = 1, env: dict[str, str] | None = None, tp: int = 1,
                    concurrency: list[int] | None = None, name: str = "bench-standin") -> Profile:
    return Profile(
        name=name, description="stand-in server for the bench tests", source="tests",
        model=ModelSpec(generate="tiny-deepseek-v3-mtp"), toolkit={"version": None},
        serve=ServeSpec(port=free_port(), served_model_name="tiny-mtp", tensor_parallel_size=tp, max_model_len=256,
                        kv_cache_dtype=None, block_size=None, trust_remote_code=False, ready_timeout_s=30,
                        stall_timeout_s=20),
        spec=SpecConfig(num_speculative_tokens=k), env=env or {},
        smoke=SmokeSpec(prompt="Hi", expect="ok", max_tokens=8, min_acceptance=0.5),
        bench=BenchSpec(k_values=[0, 1, 2], concurrency=concurrency or [1],
                        shapes={"short": BenchShape(input_len=16, output_len=32, num_prompts=4)},
                        default_shape="short"))


@pytest.fixture
def standin_workdir(tmp_path: Path) -> Iterator[Workdir]:
    """A workdir with the stand-in interpreter; every server started for it is gone after the test (or it fails)."""
    workdir = Workdir(tmp_path / "wd").ensure()
    install_standin(workdir)
    yield workdir
    left = servers_of(workdir)
    for proc in left:
        proc.kill()
    assert not left, f"server processes left behind: {left}"


def servers_of(workdir: Workdir) -> list[psutil.Process]:
    """Live processes of servers started for this workdir (they carry the serve id and run in the workdir)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if SERVE_ID_ENV in proc.environ() and Path(proc.cwd()) == workdir.root \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def load_rows(name: str) -> list[dict[str, Any]]:
    """Rows of a fixture results file (written by a real `dsv4setup bench` of the first release on cpu-tiny,
    bench-row/1), as this release reads them (bench-row/2)."""
    return [upgrade_row(json.loads(line)) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def changed(row: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of a row with one fingerprint value replaced (dotted path under fingerprint)."""
    new = copy.deepcopy(row)
    node = new["fingerprint"]
    *path, last = dotted.split(".")
    for key in path:
        node = node[key]
    node[last] = value
    return new


def cli_env(runbook: str = "tests.bench.runbook_bench:bench_only") -> dict[str, str]:
    repo = Path(__file__).resolve().parents[2]
    return {**os.environ, "DSV4SETUP_RUNBOOK": runbook, "NO_COLOR": "1",
            "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
