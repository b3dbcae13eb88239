"""A local Hugging Face Hub for tests: real HTTP that the real `huggingface_hub` client accepts.

It serves repos from directories of files, `{repo_id: {revision: dir}}`, speaking the subset
of the Hub API that huggingface_hub 2.x uses for downloads and metadata:

- `GET /api/models/{repo}[/revision/{rev}]` (`?blobs=true` adds size, blobId and LFS sha256),
- `GET /api/models/{repo}/tree/{rev}[/{path}]` and `POST /api/models/{repo}/paths-info/{rev}`,
- `HEAD|GET /{repo}/resolve/{rev}/{file}` with `X-Repo-Commit`, `ETag`; LFS files answer with a
  302 to a second server on another port (the "CDN", another origin, so the client drops the
  token as it does with the real CDN) and carry `X-Linked-Etag` / `X-Linked-Size`,
- byte ranges (`Range: bytes=a-b` / `a-`, `206` + `Content-Range`, clamped like S3),
- the Hub's errors: `X-Error-Code: RepoNotFound | GatedRepo | RevisionNotFound | EntryNotFound`,
  401 for a missing or invalid token, 403 for a token without access to a gated repo.

Tests read what was served (`bytes_served`, `requests`) and inject faults: drop the connection
after N bytes of a file, stall there until released, or answer 503 afterwards. `rate_bps` makes
the server a link of that many bytes per second, shared by every transfer at once (file bodies
only; benchmarks use it to make a download take a chosen time).

Use it in a thread::

    with HubServer({"org/model": {"main": path}}) as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint  # for a subprocess; in-process pass endpoint=

or as a process: `python tests/checkpoint/hubserver.py --repo org/model=main:/path [--gated] [--token T]
[--rate BYTES_PER_S]`
prints `endpoint=http://127.0.0.1:PORT` on stdout once it listens, and serves until killed.
Only the standard library is used, so any test (or benchmark) can import it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".onnx")
LFS_MIN_SIZE = 10 * 1024 * 1024  # larger files go to LFS whatever their name (like .gitattributes rules)
COPY_CHUNK = 256 * 1024
FaultMode = Literal["drop", "stall", "drop-then-503"]


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class HubFile:
    path: str  # repo path, '/'-separated
    local: Path
    size: int
    lfs: bool
    sha256: str | None  # LFS files only
    blob_id: str  # git oid: of the content, or of the LFS pointer for LFS files
    pointer_size: int | None

    def sibling(self, blobs: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": self.path}
        if blobs:
            entry.update(size=self.size, blobId=self.blob_id)
            if self.lfs:
                entry["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry


def scan_snapshot(root: Path, content_hashes: bool = True) -> dict[str, HubFile]:
    """Index every file under root (hidden names skipped) as the Hub would list it.

    `content_hashes=False` derives the LFS sha256 from name, size and mtime instead of reading
    the file: a shortcut for huge sparse files (benchmarks) whose content nobody verifies.
    """
    files: dict[str, HubFile] = {}
    for local in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = local.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        size = local.stat().st_size
        lfs = rel.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
        if not lfs:
            files[rel] = HubFile(rel, local, size, False, None, _git_blob_sha1(local.read_bytes()), None)
            continue
        if content_hashes:
            sha = _sha256_file(local)
        else:
            sha = hashlib.sha256(f"{rel}:{size}:{local.stat().st_mtime_ns}".encode()).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()
        files[rel] = HubFile(rel, local, size, True, sha, _git_blob_sha1(pointer), len(pointer))
    return files


@dataclass
class Snapshot:
    name: str  # the revision name it was registered under (branch, tag or sha)
    commit: str
    files: dict[str, HubFile]


@dataclass
class RepoSpec:
    """A served repo: its revisions (name -> directory) and who may read it."""

    revisions: Mapping[str, Path]
    gated: bool = False  # metadata public, files need a token with access
    private: bool = False  # everything needs a token with access


@dataclass
class Fault:
    mode: FaultMode
    after_bytes: int
    times: int  # how many responses it still applies to (drop/stall); 503 stays until cleared
    triggered: int = 0


@dataclass
class RequestRecord:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    status: int
    range: str | None
    authorized: bool
    repo: str | None = None
    file: str | None = None
    body_bytes: int = 0


class Pacer:
    """A link of `rate_bps` bytes per second that every transfer shares: `take(n)` returns once the link
    has carried the n bytes after everything taken before them (None: no limit)."""

    def __init__(self, rate_bps: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_bps is not None and rate_bps <= 0:
            raise ValueError(f"rate_bps must be positive, not {rate_bps}")
        self.rate_bps, self._clock, self._sleep = rate_bps, clock, sleep
        self._lock = threading.Lock()
        self._free_at = 0.0  # when the link has carried everything taken so far

    def take(self, n: int) -> None:
        if self.rate_bps is None or n <= 0:
            return
        with self._lock:
            self._free_at = max(self._free_at, self._clock()) + n / self.rate_bps
            done_at = self._free_at
        wait = done_at - self._clock()
        if wait > 0:
            self._sleep(wait)


@dataclass
class _State:
    repos: dict[str, RepoSpec]
    snapshots: dict[str, dict[str, Snapshot]]  # repo -> revision name or commit -> snapshot
    tokens: dict[str, set[str]]  # token -> repos it may read ("*" = all)
    secret: bytes
    faults: dict[tuple[str, str], Fault] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    cdn_base: str = ""
    pacer: Pacer = field(default_factory=lambda: Pacer(None))


class HubServer:
    """The hub (API + resolve) and its CDN, each a ThreadingHTTPServer on 127.0.0.1, ephemeral ports."""

    def __init__(self, repos: Mapping[str, Mapping[str, Path] | RepoSpec], *,
                 tokens: Mapping[str, Collection[str]] | None = None, content_hashes: bool = True,
                 host: str = "127.0.0.1", rate_bps: float | None = None) -> None:
        specs = {rid: spec if isinstance(spec, RepoSpec) else RepoSpec(dict(spec)) for rid, spec in repos.items()}
        self._state = _State(repos=specs, snapshots={}, tokens={t: set(r) for t, r in (tokens or {}).items()},
                             secret=secrets.token_bytes(16), pacer=Pacer(rate_bps))
        self._content_hashes = content_hashes
        self._host = host
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.refresh()

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> HubServer:
        for kind in ("hub", "cdn"):
            server = _QuietServer((self._host, 0), _handler_class(self._state, kind))
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                      name=f"hubserver-{kind}", daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self._state.cdn_base = f"http://{self._host}:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        self._state.release.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if not self._servers:
            raise RuntimeError("HubServer is not started")
        return f"http://{self._host}:{self._servers[0].server_address[1]}"

    # --- content ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read every revision directory (after a test changed files on the 'remote')."""
        snapshots: dict[str, dict[str, Snapshot]] = {}
        for repo_id, spec in self._state.repos.items():
            snapshots[repo_id] = {}
            for name, root in spec.revisions.items():
                files = scan_snapshot(Path(root), self._content_hashes)
                commit = name if re.fullmatch(r"[0-9a-f]{40}", name) else _commit_id(repo_id, name, files)
                snap = Snapshot(name, commit, files)
                snapshots[repo_id][name] = snap
                snapshots[repo_id][commit] = snap
        with self._state.lock:
            self._state.snapshots = snapshots

    def commit(self, repo_id: str, revision: str = "main") -> str:
        return self._state.snapshots[repo_id][revision].commit

    def file_info(self, repo_id: str, path: str, revision: str = "main") -> HubFile:
        return self._state.snapshots[repo_id][revision].files[path]

    # --- observation and faults -------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        with self._state.lock:
            return list(self._state.requests)

    def bytes_served(self, repo: str | None = None, file: str | None = None) -> int:
        """Body bytes sent (API JSON included when no file is named)."""
        return sum(r.body_bytes for r in self.requests
                   if (repo is None or r.repo == repo) and (file is None or r.file == file))

    def file_requests(self, repo: str | None = None, file: str | None = None) -> list[RequestRecord]:
        """GET requests that sent (part of) a file's content."""
        return [r for r in self.requests if r.method == "GET" and r.file is not None and r.body_bytes > 0
                and (repo is None or r.repo == repo) and (file is None or r.file == file)]

    def reset_stats(self) -> None:
        with self._state.lock:
            self._state.requests.clear()

    def fault(self, repo: str, file: str, mode: FaultMode, after_bytes: int, times: int = 1) -> None:
        """Make the next `times` downloads of `file` break after `after_bytes` body bytes.

        drop: close the connection; stall: hold it until `release()` (or `stop()`);
        drop-then-503: drop once, then answer every later request for the file with 503.
        """
        with self._state.lock:
            self._state.faults[(repo, file)] = Fault(mode, after_bytes, times)
            self._state.release.clear()

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()
        self._state.release.set()

    def release(self) -> None:
        self._state.release.set()

    def wait_for_bytes(self, repo: str, file: str, at_least: int, timeout: float = 30.0) -> int:
        """Block until `at_least` body bytes of `file` were sent; returns the count."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sent = self.bytes_served(repo, file)
            if sent >= at_least:
                return sent
            time.sleep(0.02)
        raise TimeoutError(f"{repo}/{file}: {self.bytes_served(repo, file)} bytes sent, expected {at_least}")


def _commit_id(repo_id: str, revision: str, files: dict[str, HubFile]) -> str:
    digest = hashlib.sha1(f"{repo_id}@{revision}".encode())
    for f in files.values():
        digest.update(f"{f.path}:{f.blob_id}\n".encode())
    return digest.hexdigest()


class _Reply(Exception):
    """An early answer (error or redirect) raised from deep inside a handler."""

    def __init__(self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _error(status: int, code: str | None, message: str, commit: str | None = None) -> _Reply:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    if commit:
        headers["X-Repo-Commit"] = commit
    return _Reply(status, {"error": message}, headers)


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) for a single `bytes=` range; None: whole file. Raises _Reply(416)."""
    if not header:
        return None
    match = _RANGE_RE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None  # unsupported syntax: serve the whole file, as many servers do
    first, last = match.group(1), match.group(2)
    if not first:  # suffix range: the last N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise _Reply(416, None, {"Content-Range": f"bytes */{size}"})
    return start, end


class _QuietServer(ThreadingHTTPServer):
    """Clients that go away (killed processes, timeouts) are normal here: no traceback on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _handler_class(state: _State, kind: str) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        pass

    Handler.state = state
    Handler.kind = kind
    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dsv4setup-test-hub/1"
    state: _State
    kind: str

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr access logs
        return

    # --- dispatch --------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        self._record = RequestRecord(self.kind, method, self.path, 0, self.headers.get("Range"),
                                     self.headers.get("Authorization") is not None)
        with self.state.lock:  # listed at once, so tests can watch bytes of a transfer still in flight
            self.state.requests.append(self._record)
        try:
            if self.kind == "cdn":
                self._cdn(method)
            else:
                self._hub(method)
        except _Reply as reply:
            self._send_reply(reply, method)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _hub(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            self._record.repo = repo_id
            self._check_token()
            if not rest:
                return self._model_info(method, repo_id, "main", query)
            if rest[0] == "revision" and len(rest) == 2:
                return self._model_info(method, repo_id, rest[1], query)
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
            if rest[0] == "paths-info" and len(rest) == 2 and method == "POST":
                return self._paths_info(repo_id, rest[1])
        raw = [p for p in url.path.split("/") if p]
        if len(raw) >= 5 and raw[2] == "resolve":
            repo_id = f"{unquote(raw[0])}/{unquote(raw[1])}"
            self._record.repo, self._record.file = repo_id, unquote("/".join(raw[4:]))
            self._check_token()
            return self._resolve(method, repo_id, unquote(raw[3]), self._record.file)
        raise _error(404, None, f"no such route: {url.path}")

    # --- auth ------------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _check_token(self) -> None:
        token = self._token()
        if token is not None and token not in self.state.tokens:
            raise _error(401, None, "Invalid credentials in Authorization header")

    def _may_read(self, repo_id: str) -> bool:
        token = self._token()
        if token is None:
            return False
        granted = self.state.tokens.get(token, set())
        return "*" in granted or repo_id in granted

    def _snapshot(self, repo_id: str, revision: str, *, files: bool) -> Snapshot:
        spec = self.state.repos.get(repo_id)
        if spec is None or (spec.private and not self._may_read(repo_id)):
            status = 404 if self._token() else 401
            raise _error(status, "RepoNotFound", "Repository not found")
        snap = self.state.snapshots[repo_id].get(revision)
        if snap is None:
            raise _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if files and spec.gated and not self._may_read(repo_id):
            if self._token() is None:
                raise _error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to "
                             "it and be authenticated to access it. Please log in.", snap.commit)
            raise _error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                         "authorized list. Visit the repo page to ask for access.", snap.commit)
        return snap

    # --- API -------------------------------------------------------------------------------
    def _model_info(self, method: str, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        snap = self._snapshot(repo_id, revision, files=False)
        spec = self.state.repos[repo_id]
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        doc = {"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
               "author": repo_id.split("/")[0], "sha": snap.commit, "private": spec.private,
               "gated": "manual" if spec.gated else False, "disabled": False, "downloads": 0, "likes": 0,
               "tags": [], "library_name": "transformers", "lastModified": "2026-01-01T00:00:00.000Z",
               "createdAt": "2026-01-01T00:00:00.000Z",
               "siblings": [f.sibling(blobs) for f in snap.files.values()]}
        if blobs:
            doc["usedStorage"] = sum(f.size for f in snap.files.values())
        self._send_json(doc, method)

    def _tree(self, repo_id: str, revision: str, prefix: str, query: dict[str, list[str]]) -> None:
        snap = self._snapshot(repo_id, revision, files=False)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        if base and not any(p.startswith(base) for p in snap.files):
            raise _error(404, "EntryNotFound", f"{prefix} does not exist on {revision}", snap.commit)
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for path, f in snap.files.items():
            if not path.startswith(base):
                continue
            rest = path[len(base):]
            if "/" in rest:
                for depth, _ in enumerate(rest.split("/")[:-1]):
                    d = base + "/".join(rest.split("/")[:depth + 1])
                    if (recursive or depth == 0) and d not in dirs:
                        dirs.add(d)
                        entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(),
                                        "size": 0, "path": d})
                if not recursive:
                    continue
            entries.append(f.tree_entry())
        self._send_json(entries, "GET")

    def _paths_info(self, repo_id: str, revision: str) -> None:
        snap = self._snapshot(repo_id, revision, files=False)
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode()) if length else {}
        wanted = form.get("paths", [])
        self._send_json([snap.files[p].tree_entry() for p in wanted if p in snap.files], "POST")

    # --- files -----------------------------------------------------------------------------
    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        snap = self._snapshot(repo_id, revision, files=True)
        f = snap.files.get(path)
        if f is None:
            raise _error(404, "EntryNotFound", f"{path} does not exist on {revision}", snap.commit)
        headers = {"X-Repo-Commit": snap.commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            expires = str(int(time.time()) + 3600)
            location = (f"{self.state.cdn_base}/blobs/{f.sha256}?repo={quote(repo_id, safe='')}"
                        f"&rev={snap.commit}&file={quote(path, safe='')}&exp={expires}"
                        f"&sig={self._sign(repo_id, snap.commit, path, expires)}")
            headers.update({"ETag": f'"{f.blob_id}"', "X-Linked-Etag": f'"{f.sha256}"',
                            "X-Linked-Size": str(f.size), "Location": location})
            raise _Reply(302, None, headers)
        headers["ETag"] = f'"{f.blob_id}"'
        self._send_file(method, repo_id, f, headers)

    def _sign(self, repo_id: str, commit: str, path: str, expires: str) -> str:
        return hmac.new(self.state.secret, f"{repo_id}|{commit}|{path}|{expires}".encode(), "sha256").hexdigest()

    def _cdn(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        repo_id, commit, path = query.get("repo", ""), query.get("rev", ""), query.get("file", "")
        self._record.repo, self._record.file = repo_id or None, path or None
        expected = self._sign(repo_id, commit, path, query.get("exp", ""))
        if not hmac.compare_digest(expected, query.get("sig", "")) or int(query.get("exp", "0")) < time.time():
            raise _error(403, None, "Request has expired or the signature does not match")
        f = self.state.snapshots.get(repo_id, {}).get(commit, Snapshot("", "", {})).files.get(path)
        if f is None or not url.path.endswith(f"/blobs/{f.sha256}"):
            raise _error(404, None, "NoSuchKey")
        self._send_file(method, repo_id, f, {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"})

    def _send_file(self, method: str, repo_id: str, f: HubFile, headers: dict[str, str]) -> None:
        with self.state.lock:
            fault = self.state.faults.get((repo_id, f.path))
        if fault is not None and method == "GET" and fault.mode == "drop-then-503" and fault.triggered:
            raise _error(503, None, "Service Unavailable")
        span = parse_range(self.headers.get("Range"), f.size)
        start, end = span if span else (0, f.size - 1)
        length = end - start + 1 if f.size else 0
        self._record.status = 206 if span else 200
        self.send_response(self._record.status)
        for key, value in headers.items():
            self.send_header(key, value)
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
        self.send_header("Content-Type", "application/octet-stream" if f.lfs else _content_type(f.path))
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if method == "HEAD" or not length:
            return
        limit = None
        if fault is not None and (fault.times > 0 if fault.mode != "drop-then-503" else not fault.triggered):
            limit = fault.after_bytes
        self._stream(f.local, start, length, limit, fault)

    def _stream(self, local: Path, start: int, length: int, limit: int | None, fault: Fault | None) -> None:
        with local.open("rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining:
                want = min(COPY_CHUNK, remaining)
                if limit is not None:
                    want = min(want, limit - self._record.body_bytes)
                    if want <= 0:
                        self._break_connection(fault)
                        return
                chunk = fh.read(want)
                if not chunk:
                    break
                self.state.pacer.take(len(chunk))
                self._record.body_bytes += len(chunk)  # counted first: the client may be done before we return
                self.wfile.write(chunk)
                self.wfile.flush()
                remaining -= len(chunk)

    def _break_connection(self, fault: Fault | None) -> None:
        assert fault is not None
        with self.state.lock:
            fault.triggered += 1
            if fault.mode != "drop-then-503":
                fault.times -= 1
        if fault.mode == "stall":
            self.state.release.wait(timeout=120)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- replies ---------------------------------------------------------------------------
    def _send_json(self, doc: Any, method: str) -> None:
        body = json.dumps(doc).encode()
        self._record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self._record.body_bytes += len(body)
            self.wfile.write(body)

    def _send_reply(self, reply: _Reply, method: str) -> None:
        body = json.dumps(reply.body).encode() if reply.body is not None else b""
        self._record.status = reply.status  # before the client can see the answer
        self.send_response(reply.status, HTTPStatus(reply.status).phrase)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if body:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and method != "HEAD":
            self._record.body_bytes += len(body)
            self.wfile.write(body)


def _content_type(path: str) -> str:
    return "application/json" if path.endswith(".json") else "text/plain; charset=utf-8"


def free_port() -> int:
    """A port that nothing listens on (for 'network down' tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def iter_repo_args(values: list[str]) -> Iterator[tuple[str, str, Path]]:
    for value in values:
        repo_id, _, rest = value.partition("=")
        revision, _, path = rest.partition(":")
        if not (repo_id and revision and path):
            raise SystemExit(f"--repo {value}: expected ORG/NAME=REVISION:DIR")
        yield repo_id, revision, Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", action="append", default=[], help="ORG/NAME=REVISION:DIR (repeatable)")
    parser.add_argument("--gated", action="append", default=[], help="a repo id that needs a token")
    parser.add_argument("--token", action="append", default=[], help="a token that may read every repo")
    parser.add_argument("--rate", type=float, default=None, help="bytes per second for all transfers together")
    args = parser.parse_args(argv)
    repos: dict[str, dict[str, Path]] = {}
    for repo_id, revision, path in iter_repo_args(args.repo):
        repos.setdefault(repo_id, {})[revision] = path
    specs = {rid: RepoSpec(revs, gated=rid in args.gated) for rid, revs in repos.items()}
    with HubServer(specs, tokens={t: {"*"} for t in args.token}, rate_bps=args.rate) as hub:
        print(f"endpoint={hub.endpoint}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return


if __name__ == "__main__":
    main()
