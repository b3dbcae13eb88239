"""The downloader against the local hub: verification, resume, disk preflight, hub errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dsv4setup.core.errors import DsvError
from dsv4setup.download.disk import DiskSpaceError, check_disk
from dsv4setup.download.progress import ByteProgress, Cancelled
from dsv4setup.download.transfer import WRITE_CHUNK, Downloader
from dsv4setup.download.verify import cheap_problems, read_manifest
from dsv4setup.hub.access import HubError
from tests.checkpoint.conftest import REPO, TOKEN
from tests.checkpoint.hubserver import HubServer, RepoSpec, free_port

MakeCkpt = Callable[..., Path]
ServeHub = Callable[..., HubServer]
MB = 1024 * 1024
CHUNK = WRITE_CHUNK
BIG = 24 * MB  # > 2 x the downloader's write chunk, so a break mid-file leaves a partial to resume
ROOT = Path(__file__).resolve().parents[2]


def big_file(src: Path) -> str:
    return max(src.glob("*.safetensors"), key=lambda p: p.stat().st_size).name


def partial_of(hub: HubServer, dest: Path, name: str) -> Path:
    """Where the downloader keeps the unfinished copy of `name` (named by its sha256)."""
    return dest.parent / f".{dest.name}.partial" / f"{hub.file_info(REPO, name).sha256}.part"


def downloader(dest: Path, **kwargs: object) -> Downloader:
    return Downloader(REPO, "main", dest, allow_patterns=["*.json", "*.safetensors"], **kwargs)  # type: ignore[arg-type]


def same_files(src: Path, dest: Path) -> bool:
    names = sorted(p.name for p in src.iterdir() if p.is_file())
    return names == sorted(p.name for p in dest.iterdir()) and all(
        (src / n).read_bytes() == (dest / n).read_bytes() for n in names)


def test_full_download_is_verified_and_a_second_run_fetches_nothing(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                                    tmp_path: Path) -> None:
    src = make_checkpoint(pad_bytes=2 * MB)
    hub = serve_hub({REPO: src})
    dest = tmp_path / "wd" / "models" / "ckpt"
    messages: list[str] = []
    result = downloader(dest, report=messages.append).run()
    assert same_files(src, dest)
    assert result.commit == hub.commit(REPO) and result.files == 7
    assert result.bytes == sum(p.stat().st_size for p in src.iterdir()) == result.fetched_bytes
    assert result.verified == "git-sha1+sha256"
    manifest = read_manifest(dest)
    assert manifest is not None and manifest.complete and cheap_problems(manifest) == []
    assert {r.verified for r in manifest.verified.values()} == {"sha256", "git-sha1"}
    assert any("7/7 files" in m for m in messages)
    assert not (dest.parent / f".{dest.name}.partial").exists()

    hub.reset_stats()
    again = downloader(dest).run()
    assert again.fetched_bytes == 0 and hub.file_requests() == []


def test_dropped_connection_resumes_with_a_range_request(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                         tmp_path: Path) -> None:
    src = make_checkpoint(pad_bytes=BIG)
    name = big_file(src)
    size = (src / name).stat().st_size
    hub = serve_hub({REPO: src})
    hub.fault(REPO, name, "drop", after_bytes=CHUNK + 2 * MB)
    downloader(tmp_path / "dest").run()
    assert (tmp_path / "dest" / name).read_bytes() == (src / name).read_bytes()
    gets = hub.file_requests(REPO, name)
    assert len(gets) == 2 and gets[0].range is None
    assert gets[1].range == f"bytes={CHUNK}-" and gets[1].status == 206
    assert gets[1].body_bytes == size - CHUNK < size  # only the rest was fetched again


def test_killed_download_resumes_from_its_partial_file(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                       tmp_path: Path) -> None:
    src = make_checkpoint(pad_bytes=BIG)
    name = big_file(src)
    size = (src / name).stat().st_size
    hub = serve_hub({REPO: src})
    hub.fault(REPO, name, "stall", after_bytes=CHUNK + MB)
    dest = tmp_path / "dest"
    script = ("import sys; from pathlib import Path; from dsv4setup.download.transfer import Downloader; "
              "Downloader(sys.argv[1], 'main', Path(sys.argv[2]), allow_patterns=['*.json', '*.safetensors']).run()")
    proc = subprocess.Popen([sys.executable, "-c", script, REPO, str(dest)], cwd=ROOT, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    part = partial_of(hub, dest, name)
    try:
        hub.wait_for_bytes(REPO, name, CHUNK + MB)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (part.is_file() and part.stat().st_size >= CHUNK):
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    hub.clear_faults()
    assert part.stat().st_size == CHUNK
    assert not (dest / name).exists()
    manifest = read_manifest(dest)
    assert manifest is not None and not manifest.complete

    hub.reset_stats()
    result = downloader(dest).run()
    assert same_files(src, dest)
    [get] = hub.file_requests(REPO, name)
    assert get.range == f"bytes={CHUNK}-" and get.body_bytes == size - CHUNK < size
    assert result.fetched_bytes < result.bytes


def test_hub_failure_mid_file_keeps_the_partial_and_reports_the_error(make_checkpoint: MakeCkpt,
                                                                      serve_hub: ServeHub, tmp_path: Path) -> None:
    src = make_checkpoint(pad_bytes=BIG)
    name = big_file(src)
    hub = serve_hub({REPO: src})
    hub.fault(REPO, name, "drop-then-503", after_bytes=CHUNK + MB)
    dest = tmp_path / "dest"
    with pytest.raises(HubError) as excinfo:
        downloader(dest, workers=1).run()
    assert "503" in excinfo.value.message and "run the same command again" in (excinfo.value.fix or "")
    manifest = read_manifest(dest)
    assert manifest is not None and not manifest.complete and name not in manifest.verified
    assert not (dest / name).exists(), "a half-written file must never sit where the checkpoint is loaded"
    hub.clear_faults()
    hub.reset_stats()
    downloader(dest).run()
    assert same_files(src, dest)
    assert hub.file_requests(REPO, name)[0].range == f"bytes={CHUNK}-"


def test_corrupted_byte_is_caught_by_verify_and_the_file_fetched_again(make_checkpoint: MakeCkpt,
                                                                       serve_hub: ServeHub, tmp_path: Path) -> None:
    src = make_checkpoint()
    hub = serve_hub({REPO: src})
    dest = tmp_path / "dest"
    downloader(dest).run()
    victim = dest / "model-00002-of-00003.safetensors"
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # silent corruption: same size, same mtime
    manifest = read_manifest(dest)
    assert manifest is not None and cheap_problems(manifest) == []
    hub.reset_stats()
    result = downloader(dest).run(full_verify=True)
    assert result.refetched == [victim.name]
    assert victim.read_bytes() == (src / victim.name).read_bytes()
    assert [r.file for r in hub.file_requests()] == [victim.name]

    victim.write_bytes(b"edited")  # a visible change is caught by the cheap postcondition too
    manifest = read_manifest(dest)
    assert manifest is not None
    assert cheap_problems(manifest) == [f"{victim.name} has 6 bytes, expected {len(data)}"]


def test_not_enough_disk_is_refused_before_any_byte(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                    tmp_path: Path) -> None:
    src = make_checkpoint(pad_bytes=2 * MB)
    hub = serve_hub({REPO: src})
    dest = tmp_path / "dest"
    seen: list[Path] = []

    def small_disk(path: Path) -> int:
        seen.append(path)
        return 5 * MB

    with pytest.raises(DiskSpaceError) as excinfo:
        downloader(dest, free_space=small_disk).run()
    assert "not enough disk space" in excinfo.value.message and "nothing was downloaded" in excinfo.value.message
    assert "+ margin 1.1 GB" in excinfo.value.message
    assert seen == [dest]
    assert [r.path.split("?")[0] for r in hub.requests] == [f"/api/models/{REPO}/revision/main"]
    assert not dest.exists() or not any(dest.iterdir())


def test_missing_repo_wrong_revision_and_network_down(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_hub({REPO: make_checkpoint()})
    with pytest.raises(HubError, match="not found") as excinfo:
        Downloader("org/nope", "main", tmp_path / "a").run()
    assert "model.repo" in (excinfo.value.fix or "")
    with pytest.raises(HubError, match="revision 'v9' does not exist") as excinfo:
        Downloader(REPO, "v9", tmp_path / "b").run()
    assert "model.revision" in (excinfo.value.fix or "")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HubError, match="cannot reach the Hugging Face hub"):
        Downloader(REPO, "main", tmp_path / "c").run()
    assert not any((tmp_path / d).exists() for d in "abc")


def test_gated_repo_401_without_token_403_without_access_and_a_bad_token(
        make_checkpoint: MakeCkpt, serve_hub: ServeHub, tmp_path: Path) -> None:
    other = "hf_other_account_token_000000"
    hub = serve_hub({REPO: RepoSpec({"main": make_checkpoint()}, gated=True)},
                    tokens={TOKEN: {REPO}, other: {"org/something-else"}})
    with pytest.raises(HubError) as excinfo:
        downloader(tmp_path / "a").run()
    assert "is gated" in excinfo.value.message and "HF_TOKEN" in (excinfo.value.fix or "")
    assert not any("/resolve/" in r.path for r in hub.requests), "refused before any file request"
    with pytest.raises(HubError) as excinfo:
        downloader(tmp_path / "b", token=other).run()
    assert "not in its authorized list" in excinfo.value.message
    assert [r.status for r in hub.requests if "/resolve/" in r.path] == [403]
    with pytest.raises(HubError, match="rejected the Hugging Face token"):
        downloader(tmp_path / "c", token="hf_invalid_token_123456").run()
    result = downloader(tmp_path / "d", token=TOKEN).run()
    assert result.files == 7
    assert all(r.authorized for r in hub.requests if r.server == "hub" and r.status == 200 and "/resolve/" in r.path)
    assert not any(r.authorized for r in hub.requests if r.server == "cdn"), "the token must not reach the CDN"


def test_hf_cache_mode_links_the_verified_snapshot(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                   tmp_path: Path) -> None:
    src = make_checkpoint(pad_bytes=MB)
    hub = serve_hub({REPO: src})
    cache = tmp_path / "hf-cache"
    dest = tmp_path / "wd" / "models" / "ckpt"
    result = downloader(dest, hf_cache=cache).run()
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / hub.commit(REPO)
    assert result.mode == "hf-cache" and result.root == snapshot
    assert dest.is_symlink() and dest.resolve() == snapshot.resolve()
    assert same_files(src, dest)
    manifest = read_manifest(dest)
    assert manifest is not None and manifest.complete and cheap_problems(manifest) == []
    assert result.fetched_bytes >= (src / big_file(src)).stat().st_size

    with pytest.raises(DsvError, match="HF-cache mode download"):
        downloader(dest).run()  # workdir mode must not write into the HF cache through the link

    blob = (snapshot / "model-00001-of-00003.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    again = downloader(dest, hf_cache=cache).run()
    assert again.refetched == ["model-00001-of-00003.safetensors"]
    assert same_files(src, dest)


def test_the_hub_client_of_this_test_process_trusts_no_local_server_as_the_hub() -> None:
    """huggingface_hub reads HF_ENDPOINT once, at import, and follows redirects to that origin: tests/conftest.py
    imports it before any test points HF_ENDPOINT at a local hub, or a later CDN on a reused port would pass for
    the Hub (CI saw the HF-cache download read a file's metadata from the CDN, without X-Repo-Commit)."""
    from huggingface_hub import constants

    assert constants.ENDPOINT == "https://huggingface.co"


def test_a_directory_in_the_way_of_the_hf_cache_link_is_not_replaced(make_checkpoint: MakeCkpt,
                                                                     serve_hub: ServeHub, tmp_path: Path) -> None:
    serve_hub({REPO: make_checkpoint()})
    dest = tmp_path / "dest"
    downloader(dest).run()
    with pytest.raises(DsvError, match="is a directory"):
        downloader(dest, hf_cache=tmp_path / "cache").run()
    assert (dest / "config.json").is_file()


def test_ctrl_c_stops_the_workers_and_keeps_the_partial(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                        tmp_path: Path) -> None:
    src = make_checkpoint(pad_bytes=BIG)
    name = big_file(src)
    hub = serve_hub({REPO: src})
    hub.fault(REPO, name, "stall", after_bytes=CHUNK + MB)
    main_thread = threading.get_ident()

    def interrupt() -> None:
        hub.wait_for_bytes(REPO, name, CHUNK + MB)
        time.sleep(0.2)
        signal.pthread_kill(main_thread, signal.SIGINT)
        time.sleep(0.2)
        hub.release()  # the stalled transfer gets data again: its next chunk sees the cancel

    dest = tmp_path / "dest"
    threading.Thread(target=interrupt, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        downloader(dest).run()
    assert time.monotonic() - started < 10
    assert not (dest / name).exists()
    assert partial_of(hub, dest, name).stat().st_size >= CHUNK
    assert not any(t.name.startswith("dsv4setup-dl") for t in threading.enumerate())


def test_byte_progress_reports_totals_rate_and_eta() -> None:
    now = [100.0]
    messages: list[str] = []
    progress = ByteProgress(total=1000 * MB, files=4, report=messages.append, done=100 * MB, clock=lambda: now[0])
    now[0] += 10
    progress.add(200 * MB)
    assert messages[-1] == "314.6 MB / 1.0 GB (30 %), 21.0 MB/s, 0/4 files, ETA 35 s"
    progress.file_done()
    assert "1/4 files" in messages[-1]
    progress.cancel.set()
    with pytest.raises(Cancelled):
        progress.add(1)


def test_disk_margin_is_two_percent_with_a_one_gib_floor(tmp_path: Path) -> None:
    small = check_disk(10 * MB, tmp_path, lambda _p: 2 << 30)
    assert small.margin == 1 << 30 and small.ok
    big = check_disk(200 * 10**9, tmp_path / "not" / "yet", lambda _p: 300 * 10**9)
    assert big.margin == 4 * 10**9 and big.path == tmp_path
    with pytest.raises(DiskSpaceError, match="short by 4.0 GB"):
        check_disk(200 * 10**9, tmp_path, lambda _p: 200 * 10**9)
    assert check_disk(0, tmp_path, lambda _p: 0).ok


def test_new_revision_replaces_our_old_files_and_stale_partials(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                                tmp_path: Path) -> None:
    v1, v2 = make_checkpoint("v1", shards=3), make_checkpoint("v2", shards=2, seed=7)
    hub = serve_hub({REPO: RepoSpec({"v1": v1, "v2": v2})})
    dest = tmp_path / "dest"
    Downloader(REPO, "v1", dest, allow_patterns=["*.json", "*.safetensors"]).run()
    assert (dest / "model-00003-of-00003.safetensors").is_file()
    stale_part = dest.parent / f".{dest.name}.partial" / f"{'0' * 64}.part"
    stale_part.parent.mkdir(exist_ok=True)
    stale_part.write_bytes(b"left over from an interrupted run of another revision")
    (dest / "notes.txt").write_text("the user's own file")
    messages: list[str] = []
    result = Downloader(REPO, "v2", dest, allow_patterns=["*.json", "*.safetensors"], report=messages.append).run()
    assert result.commit == hub.commit(REPO, "v2")
    assert not (dest / "model-00003-of-00003.safetensors").exists()
    assert not stale_part.exists()
    assert (dest / "notes.txt").read_text() == "the user's own file", "files we did not download are left alone"
    for name in ("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert (dest / name).read_bytes() == (v2 / name).read_bytes()
    assert any("removing model-00003-of-00003.safetensors" in m for m in messages)
