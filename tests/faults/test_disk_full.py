"""A full disk, for real: a small tmpfs fills during a download and during state writes. The error is
clear, what was written before is intact, and the same command resumes once space is freed.
Needs root to mount a tmpfs; skipped with the reason otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dsv4setup.core.errors import DsvError
from dsv4setup.download.transfer import Downloader
from tests.checkpoint.conftest import REPO, hf_env, make_checkpoint, serve_hub  # noqa: F401 (fixtures)
from tests.checkpoint.hubserver import HubServer
from tests.core.test_cli_kill_resume import dsv, env  # noqa: F401 (env is a fixture)
from tests.faults.tally import record

MB = 1024 * 1024


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (MB, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


def test_state_writes_on_a_full_disk(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        wd = mnt / "wd"
        env = {**env, "DSV4SETUP_WORKDIR": str(wd)}
        assert dsv({**env, "TEST_STEPS_FAIL": "gamma"}, "up", "--profile", "cpu-tiny", "--yes").returncode == 1
        before = (wd / "state.json").read_bytes()
        filler = fill(mnt)
        full = dsv(env, "up", "--profile", "cpu-tiny", "--yes")
        intact = (wd / "state.json").read_bytes() == before
        clear = (full.returncode == 1 and "No space left on device" in full.stderr
                 and "internal error" not in full.stderr)
        filler.unlink()
        resumed = dsv(env, "up", "--profile", "cpu-tiny", "--yes", "--json")
        record("disk full", "state write", survived=clear and resumed.returncode == 0, data_lost=not intact)
        assert clear, full.stderr
        assert "Traceback" not in full.stderr and intact
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["ok"]
        assert not list(wd.glob(".state.json.*.tmp"))  # no temp file left behind


def test_a_download_that_fills_the_disk(make_checkpoint: Callable[..., Path],  # noqa: F811
                                        serve_hub: Callable[..., HubServer], tmp_path: Path) -> None:  # noqa: F811
    src = make_checkpoint(pad_bytes=24 * MB)
    name = max(src.glob("*.safetensors"), key=lambda p: p.stat().st_size).name
    hub = serve_hub({REPO: src})
    with tmpfs(tmp_path / "mnt", "1100m") as mnt:  # the download's preflight wants 1 GiB to spare
        dest = mnt / "models" / "ckpt"
        hub.fault(REPO, name, "stall", after_bytes=11 * MB)
        outcome: list[BaseException | None] = []

        def download() -> None:
            try:
                Downloader(REPO, "main", dest, allow_patterns=["*.json", "*.safetensors"]).run()
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
                outcome.append(exc)

        worker = threading.Thread(target=download)
        worker.start()
        hub.wait_for_bytes(REPO, name, 11 * MB)
        filler = fill(mnt)  # the disk fills while the transfer is under way
        hub.release()
        worker.join(timeout=120)
        [error] = outcome
        finished = sorted(p.name for p in dest.glob("*.json"))
        clear = isinstance(error, DsvError) and "disk filled up" in error.message
        filler.unlink()
        hub.clear_faults()
        Downloader(REPO, "main", dest, allow_patterns=["*.json", "*.safetensors"]).run()  # resumes
        complete = (dest / name).read_bytes() == (src / name).read_bytes()
        record("disk full", "download", survived=clear and complete, data_lost=not complete)
        assert clear, repr(error)
        assert "free space and run again" in (error.fix or "")  # type: ignore[union-attr]
        assert finished and complete
