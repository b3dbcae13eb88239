"""Verified, resumable checkpoint download with huggingface_hub.

Two modes:

- workdir (default): files go straight into the checkpoint directory. Each file is fetched with
  huggingface_hub's public HTTP client (`get_session`, `build_hf_headers`, `hf_raise_for_status`)
  into a partial file named after its content hash, which survives a killed process: the next
  run asks for the rest with an HTTP Range request (as does a dropped connection, at once). The
  file is hashed against the hub's LFS sha256 (git sha1 for small files), fsynced, and only then
  renamed into place. The token goes to the hub only, never to a CDN of another origin.
- hf-cache (`DSV4SETUP_HF_CACHE=1`, or a path): `snapshot_download` into the Hugging Face
  cache (shared with other tools; Xet-accelerated when the hub offers it; resumes per file),
  then the same verification, and the checkpoint directory becomes a link to the snapshot.

Before any byte: the file list and sizes come from the hub (one model-info call), gated repos
without a token are refused, and what is left to fetch is compared with the free disk.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import urlsplit

from dsv4setup.core.errors import DsvError
from dsv4setup.core.fsutil import contained, fsync_dir, fsync_file
from dsv4setup.download.disk import FreeSpace, check_disk, disk_free_bytes, human
from dsv4setup.download.progress import ByteProgress, Cancelled, Measure
from dsv4setup.download.verify import (
    Manifest,
    RemoteFile,
    mark_complete,
    read_manifest,
    verify_content,
    write_manifest,
)
from dsv4setup.hub.access import HubError, explain, gated_error, hub_api, hub_endpoint, hub_exceptions

ENV_HF_CACHE = "DSV4SETUP_HF_CACHE"
ENV_WORKERS = "DSV4SETUP_DOWNLOAD_WORKERS"
DEFAULT_WORKERS = 8
WRITE_CHUNK = 10 * 1024 * 1024  # a killed transfer keeps whole chunks in its partial file
RESUME_TRIES = 5  # reconnections in a row without a new byte before a transfer gives up
Mode = Literal["workdir", "hf-cache"]
Report = Callable[[str], None]


@dataclass
class RemotePlan:
    repo: str
    revision: str
    commit: str
    files: list[RemoteFile]
    gated: bool

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class DownloadResult:
    path: Path  # the checkpoint directory vLLM loads
    root: Path  # where the files really are (the snapshot in hf-cache mode)
    repo: str
    revision: str
    commit: str
    mode: Mode
    files: int
    bytes: int
    fetched_bytes: int  # transferred in this run
    refetched: list[str] = field(default_factory=list)  # files that were on disk but bad
    verified: str = "sha256"

    def outputs(self) -> dict[str, object]:
        return {"path": str(self.path), "root": str(self.root), "repo": self.repo, "revision": self.commit,
                "requested_revision": self.revision, "mode": self.mode, "files": self.files, "bytes": self.bytes,
                "fetched_bytes": self.fetched_bytes, "refetched": self.refetched, "verified": self.verified}


def hf_cache_setting() -> Path | None:
    """DSV4SETUP_HF_CACHE: unset/0 -> workdir mode; 1/true -> the HF cache (HF_HUB_CACHE); a path -> that cache."""
    value = os.environ.get(ENV_HF_CACHE, "").strip()
    if value.lower() in ("", "0", "false", "no"):
        return None
    if value.lower() in ("1", "true", "yes"):
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    return Path(value).expanduser().absolute()


def default_workers() -> int:
    try:
        return max(1, int(os.environ.get(ENV_WORKERS, DEFAULT_WORKERS)))
    except ValueError:
        return DEFAULT_WORKERS


def fetch_plan(repo: str, revision: str, allow_patterns: list[str] | None, token: str | None) -> RemotePlan:
    """Resolve the revision and list the files to fetch with their sizes and hashes (one API call)."""
    from huggingface_hub.utils import filter_repo_objects

    try:
        info = hub_api(token).model_info(repo, revision=revision, files_metadata=True)
    except hub_exceptions() as exc:
        raise explain(exc, repo, revision, token) from None
    siblings = list(filter_repo_objects(info.siblings or [], allow_patterns=allow_patterns or None,
                                        key=lambda s: s.rfilename))
    files = [RemoteFile(path=s.rfilename, size=(s.lfs.size if s.lfs else s.size) or 0,
                        sha256=s.lfs.sha256 if s.lfs else None, blob_id=s.blob_id) for s in siblings]
    if not files:
        raise HubError(f"{repo}@{revision}: no file matches the allow patterns {allow_patterns}",
                       fix="fix model.allow_patterns in the profile (e.g. --set 'model.allow_patterns=[\"*\"]')")
    return RemotePlan(repo, revision, info.sha or revision, files, bool(info.gated))


class Downloader:
    """One download run: plan, disk preflight, concurrent resumable fetches, verification, manifest."""

    def __init__(self, repo: str, revision: str, dest: Path, *, allow_patterns: list[str] | None = None,
                 token: str | None = None, workers: int | None = None, free_space: FreeSpace | None = None,
                 report: Report = lambda _m: None, hf_cache: Path | None = None,
                 measure: Measure = lambda _done, _total, _rate: None,
                 beside: Sequence[tuple[str, int, Path]] = ()) -> None:
        self.repo, self.revision, self.dest = repo, revision, Path(dest).absolute()
        self.allow_patterns = list(allow_patterns or [])
        self.token = token
        self.workers = workers or default_workers()
        self.free_space = free_space or disk_free_bytes
        self.report = report
        self.measure = measure
        self.hf_cache = hf_cache
        self.beside = list(beside)  # (name, bytes, where): what other steps write meanwhile (the disk check)
        self.partial_dir = self.dest.parent / f".{self.dest.name}.partial"
        self._manifest_lock = threading.Lock()
        self._commit = revision

    # --- entry points --------------------------------------------------------------------
    def run(self, *, full_verify: bool = False) -> DownloadResult:
        plan = fetch_plan(self.repo, self.revision, self.allow_patterns, self.token)
        self.report(f"{self.repo}@{plan.commit[:12]}: {len(plan.files)} files, {human(plan.total_bytes)}")
        if plan.gated and not self.token:
            raise gated_error(self.repo, None)
        self._commit = plan.commit
        for f in plan.files:  # every name the hub lists stays inside the destination, checked before any write
            contained(self.dest, f.path, f"the hub's file list of {self.repo}@{plan.commit[:12]}")
        if self.hf_cache is not None:
            return self._run_hf_cache(plan)
        return self._run_workdir(plan, full_verify)

    # --- workdir mode ----------------------------------------------------------------------
    def _run_workdir(self, plan: RemotePlan, full_verify: bool) -> DownloadResult:
        if self.dest.is_symlink():
            raise DsvError(f"{self.dest} is a link to {os.readlink(self.dest)} (an HF-cache mode download)",
                           fix=f"set {ENV_HF_CACHE} again to keep using the HF cache, or remove the link to "
                                "download into the workdir")
        manifest = self._start_manifest(plan, "workdir", self.dest)
        todo, refetched = self._check_existing(plan, manifest, full_verify)
        partial = {f.path: self._partial(f).stat().st_size if self._partial(f).is_file() else 0 for f in todo}
        need = sum(max(f.size - partial[f.path], 0) for f in todo)
        disk = check_disk(need, self.dest, self.free_space, self.beside)
        if todo:
            self.report(f"fetching {len(todo)} file(s): {disk.describe()}")
        self._probe_access(todo)
        present = plan.total_bytes - sum(f.size for f in todo) + sum(partial.values())
        progress = ByteProgress(plan.total_bytes, len(plan.files), self.report, done=present,
                                measure=self.measure)
        progress.files_done = len(plan.files) - len(todo)
        self._fetch_all(todo, progress, manifest)
        mark_complete(manifest)
        write_manifest(self.dest, manifest)
        with contextlib.suppress(OSError):
            self.partial_dir.rmdir()
        return DownloadResult(self.dest, self.dest, self.repo, self.revision, plan.commit, "workdir",
                              len(plan.files), plan.total_bytes, progress.transferred, refetched,
                              _verified_kinds(manifest))

    def _start_manifest(self, plan: RemotePlan, mode: Mode, root: Path) -> Manifest:
        old = read_manifest(self.dest)
        manifest = Manifest(repo=self.repo, revision=self.revision, commit=plan.commit, mode=mode, root=str(root),
                            allow_patterns=self.allow_patterns, expected={f.path: f for f in plan.files})
        if old is not None and old.root == str(root):
            if old.commit == plan.commit:
                manifest.verified = {k: v for k, v in old.verified.items() if k in manifest.expected}
            if mode == "workdir":
                self._remove_stale(old, manifest)
        write_manifest(self.dest, manifest)
        return manifest

    def _remove_stale(self, old: Manifest, new: Manifest) -> None:
        """Files an earlier download of ours put there that the new plan no longer has, and their partials."""
        for rel in sorted(set(old.expected) - set(new.expected)):
            path = contained(self.dest, rel, f"the download manifest in {self.dest}")
            if path.is_file():
                self.report(f"removing {rel}: not part of {self.repo}@{new.commit[:12]} (left from {old.commit[:12]})")
                path.unlink()
        keys = {f.key for f in new.expected.values()}
        for part in self.partial_dir.glob("*.part") if self.partial_dir.is_dir() else ():
            if part.stem not in keys:
                self.report(f"removing the partial download {part.name}: not part of this revision")
                part.unlink()

    def _check_existing(self, plan: RemotePlan, manifest: Manifest, full_verify: bool
                        ) -> tuple[list[RemoteFile], list[str]]:
        """Files to fetch. Files on disk are kept when verified (cheaply, or re-hashed with full_verify)."""
        todo: list[RemoteFile] = []
        refetched: list[str] = []
        hashed = 0
        for f in plan.files:
            path = self.dest / f.path
            record = manifest.verified.get(f.path)
            if not path.is_file():
                manifest.verified.pop(f.path, None)
                todo.append(f)
                continue
            stat = path.stat()
            if not full_verify and record is not None and record.size == f.size == stat.st_size \
                    and record.mtime_ns == stat.st_mtime_ns:
                continue
            problem, new_record = verify_content(path, f)
            hashed += f.size
            self.report(f"verifying {f.path}: " + ("ok" if problem is None else "MISMATCH"))
            if problem is None and new_record is not None:
                manifest.verified[f.path] = new_record
                continue
            self.report(f"{problem}: it will be fetched again")
            manifest.verified.pop(f.path, None)
            path.unlink()
            refetched.append(f.path)
            todo.append(f)
        if hashed:
            write_manifest(self.dest, manifest)
        return todo, refetched

    def _probe_access(self, todo: list[RemoteFile]) -> None:
        """One HEAD before the workers start: a token without access fails once, with its fix."""
        if not todo:
            return
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(self.repo, min(todo, key=lambda f: f.size).path, revision=self._commit,
                         endpoint=hub_endpoint())
        try:
            get_hf_file_metadata(url, token=self.token or False, endpoint=hub_endpoint())
        except hub_exceptions() as exc:
            raise explain(exc, self.repo, self.revision, self.token) from None

    def _partial(self, f: RemoteFile) -> Path:
        return self.partial_dir / f"{f.key}.part"

    def _fetch_all(self, todo: list[RemoteFile], progress: ByteProgress, manifest: Manifest) -> None:
        if not todo:
            return
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        pool = ThreadPoolExecutor(max_workers=min(self.workers, len(todo)), thread_name_prefix="dsv4setup-dl")
        futures: list[Future[None]] = [pool.submit(self._fetch_one, f, progress, manifest)
                                       for f in sorted(todo, key=lambda f: -f.size)]
        try:
            while True:
                done, pending = wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
                failed = [fut for fut in done if fut.exception() is not None]
                if failed or not pending:
                    break
        except KeyboardInterrupt:
            progress.cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        if failed:
            progress.cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        errors = [fut.exception() for fut in futures if fut.done() and not fut.cancelled()]
        real = [e for e in errors if e is not None and not isinstance(e, Cancelled)]
        if real:
            raise self._as_error(real[0]) from real[0]

    def _fetch_one(self, f: RemoteFile, progress: ByteProgress, manifest: Manifest) -> None:
        """Fetch one file (resuming its partial), verify it, move it into place, record it."""
        for attempt in (1, 2):
            part = self._partial(f)
            self._transfer(f, part, progress)
            problem, record = verify_content(part, f, stop=progress.check_cancel)
            if problem is None and record is not None:
                break
            self.report(f"{problem} (attempt {attempt}): discarding the download")
            part.unlink(missing_ok=True)
        else:
            raise DsvError(f"{f.path} fails verification after two complete downloads: {problem}",
                           fix="the hub copy or the network path corrupts data: retry later, or pin another "
                                "revision (--set model.revision=SHA)")
        final = contained(self.dest, f.path, f"the hub's file list of {self.repo}")
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_file(part)  # the data is on disk before the rename publishes it as verified
        os.replace(part, final)
        fsync_dir(final.parent)
        stat = final.stat()
        with self._manifest_lock:
            manifest.verified[f.path] = record.model_copy(update={"mtime_ns": stat.st_mtime_ns})
            write_manifest(self.dest, manifest)
        progress.file_done()

    def _transfer(self, f: RemoteFile, part: Path, progress: ByteProgress) -> None:
        """Append the rest of `f` to its partial file: one ranged GET from where the partial ends.

        huggingface_hub's public client (`get_session`) does the HTTP; the partial file is ours, so
        it survives a kill (hf_hub_download's own temporary file is per process and deleted on
        failure, so it cannot resume after one). A connection dropped mid-file is resumed here up
        to RESUME_TRIES times in a row without new bytes.
        """
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(self.repo, f.path, revision=self._commit, endpoint=hub_endpoint())
        meta = get_hf_file_metadata(url, token=self.token or False, endpoint=hub_endpoint())
        headers = build_hf_headers(token=self.token or False)
        if origin(meta.location) != origin(url):
            headers.pop("authorization", None)  # a signed CDN URL: the token stays with the hub
        if part.is_file() and part.stat().st_size > f.size:
            part.unlink()
        with part.open("ab") as fh:
            if fh.tell():
                self.report(f"{f.path}: resuming at {human(fh.tell())} of {human(f.size)}")
            tries = 0
            while fh.tell() < f.size:
                start = fh.tell()
                try:
                    _get_rest(meta.location, headers, fh, f, progress)
                except _transport_errors():
                    tries = 0 if fh.tell() > start else tries + 1
                    if tries >= RESUME_TRIES:
                        raise
                    self.report(f"{f.path}: the connection dropped at {human(fh.tell())}, resuming")

    def _as_error(self, exc: BaseException) -> BaseException:
        """The user-facing error for a failed transfer (the exception itself when it is a bug)."""
        if isinstance(exc, DsvError):
            return exc
        if isinstance(exc, OSError) and exc.errno == 28:
            return DsvError(f"the disk filled up while downloading into {self.dest}",
                            fix="free space and run again: finished files are kept and partial ones resume")
        if isinstance(exc, hub_exceptions()):
            return explain(exc, self.repo, self.revision, self.token)
        return exc

    # --- hf-cache mode ---------------------------------------------------------------------
    def _run_hf_cache(self, plan: RemotePlan) -> DownloadResult:
        from huggingface_hub import snapshot_download

        assert self.hf_cache is not None
        repo_dir = self.hf_cache / f"models--{self.repo.replace('/', '--')}"
        snapshot = repo_dir / "snapshots" / plan.commit
        todo = [f for f in plan.files if not (snapshot / f.path).is_file()]
        disk = check_disk(sum(f.size for f in todo), self.hf_cache, self.free_space, self.beside)
        self.report(f"HF cache {self.hf_cache}: {disk.describe()}")
        manifest = self._start_manifest(plan, "hf-cache", snapshot)
        watcher = _BlobWatcher(repo_dir / "blobs", ByteProgress(plan.total_bytes, len(plan.files), self.report,
                                                                      measure=self.measure))
        try:
            with _quiet_hf_progress(), watcher:
                snapshot_download(self.repo, revision=plan.commit, cache_dir=self.hf_cache,
                                  allow_patterns=[f.path for f in plan.files], max_workers=self.workers,
                                  token=self.token or False, endpoint=hub_endpoint())
        except hub_exceptions() as exc:
            raise explain(exc, self.repo, self.revision, self.token) from None
        refetched = self._verify_snapshot(plan, manifest, snapshot)
        mark_complete(manifest)
        write_manifest(self.dest, manifest)
        _point_link(self.dest, snapshot)
        return DownloadResult(self.dest, snapshot, self.repo, self.revision, plan.commit, "hf-cache",
                              len(plan.files), plan.total_bytes, watcher.grown, refetched, _verified_kinds(manifest))

    def _verify_snapshot(self, plan: RemotePlan, manifest: Manifest, snapshot: Path) -> list[str]:
        from huggingface_hub import hf_hub_download

        refetched: list[str] = []
        for f in plan.files:
            problem, record = verify_content(snapshot / f.path, f)
            if problem is not None:
                self.report(f"{problem}: fetching it again")
                refetched.append(f.path)
                try:
                    hf_hub_download(self.repo, f.path, revision=plan.commit, cache_dir=self.hf_cache,
                                    force_download=True, token=self.token or False, endpoint=hub_endpoint())
                except hub_exceptions() as exc:
                    raise explain(exc, self.repo, self.revision, self.token) from None
                problem, record = verify_content(snapshot / f.path, f)
                if problem is not None:
                    raise DsvError(f"{problem} (after a fresh download into the HF cache)",
                                   fix="retry later or pin another revision (--set model.revision=SHA)")
            assert record is not None
            manifest.verified[f.path] = record
        return refetched


def _transport_errors() -> tuple[type[BaseException], ...]:
    """A connection that broke mid-transfer (resumable), as opposed to an HTTP error answer."""
    import httpx2

    return (httpx2.TransportError,)


def _get_rest(url: str, headers: dict[str, str], fh: BinaryIO, f: RemoteFile, progress: ByteProgress) -> None:
    """One GET of bytes fh.tell().. of `url` appended to `fh` in WRITE_CHUNK pieces (a kill keeps whole ones)."""
    from huggingface_hub import constants, get_session
    from huggingface_hub.utils import hf_raise_for_status

    start = fh.tell()
    ask = dict(headers, Range=f"bytes={start}-") if start else headers
    got = 0
    with get_session().stream("GET", url, headers=ask, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
        hf_raise_for_status(response)
        if start and response.status_code == 200:  # the server ignored the Range: start over
            fh.seek(0)
            fh.truncate()
        for chunk in response.iter_bytes(WRITE_CHUNK):
            if fh.tell() + len(chunk) > f.size:
                raise DsvError(f"the hub sends more of {f.path} than the {human(f.size)} its file list says",
                               fix="run the same command again; if it repeats, pin another revision "
                                   "(--set model.revision=SHA)")
            fh.write(chunk)
            got += len(chunk)
            progress.add(len(chunk))
    fh.flush()
    if not got and fh.tell() < f.size:
        raise DsvError(f"the hub ended the transfer of {f.path} at {human(fh.tell())} of {human(f.size)}",
                       fix="run the same command again: the partial file resumes where it stopped")


def _verified_kinds(manifest: Manifest) -> str:
    """How the files were checked: 'sha256', 'git-sha1' (small non-LFS files), 'size' (no hash known)."""
    return "+".join(sorted({r.verified for r in manifest.verified.values()}))


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _point_link(link: Path, target: Path) -> None:
    """Make `link` a symlink to `target`, atomically (a real directory there is an error)."""
    if link.exists() and not link.is_symlink():
        raise DsvError(f"{link} is a directory, the HF-cache mode wants a link there",
                       fix="move it away (it holds a workdir-mode download) or unset DSV4SETUP_HF_CACHE")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)


@contextlib.contextmanager
def _quiet_hf_progress() -> Iterator[None]:
    """huggingface_hub's own tqdm bars would garble our terminal output."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


class _BlobWatcher:
    """Progress of snapshot_download from the growth of the cache's blob directory."""

    def __init__(self, blobs: Path, progress: ByteProgress, every_s: float = 1.0) -> None:
        self.blobs, self.progress, self.every = blobs, progress, every_s
        self.start = self._size()
        self.grown = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="dsv4setup-blobwatch")

    def _size(self) -> int:
        if not self.blobs.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.blobs.iterdir() if p.is_file())

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._tick()

    def _tick(self) -> None:
        grown = self._size() - self.start
        if grown > self.grown:
            self.progress.add(grown - self.grown)
            self.grown = grown

    def __enter__(self) -> _BlobWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._tick()
