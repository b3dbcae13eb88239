"""The disk precheck with the download beside the installs (issue #28): everything on disk at once,
one number per filesystem with its parts; the judgement is pure, the measuring is separate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dsv4setup.core.state import State, StepStatus
from dsv4setup.core.workdir import Workdir
from dsv4setup.download.disk import (
    DiskPart,
    DiskSpaceError,
    check_disk,
    filesystem_key,
    installer_cache_dir,
    judge_disk,
)
from dsv4setup.download.step import installs_to_come
from dsv4setup.download.transfer import Downloader
from dsv4setup.engine import RunContext
from dsv4setup.hardware.rules import GB, load_rules
from dsv4setup.profiles.loader import load_profile_file
from dsv4setup.profiles.model import Profile
from tests.checkpoint.conftest import REPO
from tests.checkpoint.hubserver import HubServer
from tests.conftest import REPO_ROOT

ServeHub = Callable[..., HubServer]


def test_judge_sums_every_part_per_filesystem_and_puts_the_shortest_first() -> None:
    parts = [DiskPart("checkpoint", 150 * GB, "data"), DiskPart("serving venv", 15 * GB, "data"),
             DiskPart("uv cache", 15 * GB, "home"), DiskPart("margin", 10 * GB, "data")]
    checks = judge_disk(parts, {"data": 170 * GB, "home": 100 * GB}, {"data": Path("/data"), "home": Path("/home")})
    short, fine = checks
    assert (short.path, short.need, short.ok) == (Path("/data"), 175 * GB, False)  # 150 + 15 + 10 at once
    assert [p.name for p in short.parts] == ["checkpoint", "serving venv", "margin"]
    assert short.describe() == ("175.0 GB at /data (checkpoint 150.0 GB + serving venv 15.0 GB + margin 10.0 GB), "
                                "170.0 GB free")
    assert (fine.path, fine.need, fine.ok) == (Path("/home"), 15 * GB, True)
    alone = judge_disk(parts[:1], {"data": 170 * GB}, {"data": Path("/data")})
    assert alone[0].ok  # the checkpoint alone would have fitted: the installs beside it do not


def test_the_download_is_refused_when_the_installs_beside_it_would_not_fit(tmp_path: Path) -> None:
    venv = tmp_path / "wd" / "venv"
    free = 100 * GB

    def disk(_path: Path) -> int:
        return free

    assert check_disk(90 * GB, tmp_path / "wd" / "models", disk).ok
    with pytest.raises(DiskSpaceError) as info:
        check_disk(90 * GB, tmp_path / "wd" / "models", disk, [("serving venv", 15 * GB, venv)])
    message = info.value.message
    assert "checkpoint 90.0 GB + serving venv 15.0 GB + margin 2.1 GB" in message and "short by" in message
    nothing_to_fetch = check_disk(0, tmp_path / "wd" / "models", disk, [("serving venv", 150 * GB, venv)])
    assert nothing_to_fetch.ok and nothing_to_fetch.need == 0  # the download writes nothing: it blocks no one


def test_installer_cache_dir_follows_the_installers_own_variables() -> None:
    assert installer_cache_dir("uv", {"UV_CACHE_DIR": "/c/uv"}) == Path("/c/uv")
    assert installer_cache_dir("auto", {"XDG_CACHE_HOME": "/x"}) == Path("/x/uv")
    assert installer_cache_dir("pip", {"PIP_CACHE_DIR": "/c/pip", "UV_CACHE_DIR": "/c/uv"}) == Path("/c/pip")
    assert installer_cache_dir("pip", {}).name == "pip"


def cpu_tiny() -> Profile:
    return load_profile_file(REPO_ROOT / "profiles" / "cpu-tiny.yaml")


def context(workdir: Workdir, profile: Profile, done: tuple[str, ...] = ()) -> RunContext:
    state = State()
    for step in done:
        state.step(step).status = StepStatus.DONE
    return RunContext(workdir, profile, state)


def test_the_download_counts_the_installs_not_done_yet(workdir: Workdir, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    limits = load_rules().host(cpu_only=True)
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))  # the workdir's filesystem: uv links the venv
    profile = cpu_tiny()
    parts = {name: (size, where) for name, size, where in installs_to_come(context(workdir, profile))}
    assert parts == {"serving venv": (round(limits.disk_venv_gb * GB), workdir.venv_dir),
                     "CUDA toolkit": (round(limits.disk_toolkit_gb * GB), workdir.toolkit_dir)}
    (workdir.venv_dir / "lib").mkdir(parents=True)
    (workdir.venv_dir / "lib" / "torch.so").write_bytes(b"\0" * 1_000_000)  # half-installed: counted as there
    parts = {name: size for name, size, _ in installs_to_come(context(workdir, profile, done=("toolkit",)))}
    assert parts == {"serving venv": round(limits.disk_venv_gb * GB) - 1_000_000}
    assert installs_to_come(context(workdir, profile, done=("toolkit", "vllm"))) == []  # the sequential order

    pip = profile.model_copy(update={"vllm": profile.vllm.model_copy(update={"installer": "pip"})})
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    parts = {name: size for name, size, _ in installs_to_come(context(workdir, pip, done=("toolkit",)))}
    assert parts["pip cache"] == round(limits.disk_install_cache_gb * GB)  # pip keeps its own copy


def test_uv_cache_on_another_filesystem_is_counted_there(workdir: Workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or filesystem_key(shm) == filesystem_key(workdir.root):
        pytest.skip("needs a second filesystem (/dev/shm)")
    monkeypatch.setenv("UV_CACHE_DIR", str(shm / "dsv4setup-test-uv-cache"))
    parts = {name: where for name, _, where in installs_to_come(context(workdir, cpu_tiny(), done=("toolkit",)))}
    assert parts["uv cache"] == shm / "dsv4setup-test-uv-cache"  # uv copies across filesystems: it counts there


def test_the_downloader_refuses_before_any_byte_when_the_installs_beside_it_do_not_fit(
        make_checkpoint: Callable[..., Path], serve_hub: ServeHub, tmp_path: Path) -> None:
    hub = serve_hub({REPO: make_checkpoint()})
    dest = tmp_path / "wd" / "models" / "ckpt"

    def disk(_path: Path) -> int:
        return 2 * GB

    beside = [("serving venv", 4 * GB, tmp_path / "wd" / "venv")]
    with pytest.raises(DiskSpaceError, match=r"\+ serving venv 4.0 GB \+ margin"):
        Downloader(REPO, "main", dest, free_space=disk, beside=beside).run()
    assert hub.file_requests(REPO) == []
    result = Downloader(REPO, "main", dest, free_space=disk).run()  # alone it fits
    assert result.files > 0
