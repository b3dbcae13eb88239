"""A loopback caching mirror of PyPI for the resolution tests: real PyPI data, fetched once.

pip's own HTTP cache stores nothing on machines whose proxy strips Cache-Control and ETag
from PyPI's answers (this CI's does), and the index this CI reaches serves no PEP 658 core
metadata files, so pip would download every wheel (torch, cuDNN, vLLM: GBs) to read its
METADATA, on every run. The mirror serves the PEP 691 JSON simple pages with file URLs
pointing back at itself, announces core metadata for every wheel and serves it by reading
only the wheel's zip directory and METADATA member with HTTP range requests. Everything is
kept under its cache directory: metadata and files forever (PyPI files never change), index
pages for INDEX_TTL_S, so a new release shows up within a day.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError

PYPI = "https://pypi.org/simple/"
FILES = "https://files.pythonhosted.org/"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
INDEX_TTL_S = 24 * 3600
READ_AHEAD = 1 << 18
_METADATA = re.compile(r"^[^/]+\.dist-info/METADATA$")


class RemoteFile(io.RawIOBase):
    """A seekable read-only view of a remote file through HTTP range requests (for zipfile)."""

    def __init__(self, url: str) -> None:
        self.url, self.pos = url, 0
        self.block_start, self.block = 0, b""
        data, total = self._get(f"bytes=-{READ_AHEAD}")
        self.size = total
        self.block_start, self.block = total - len(data), data

    def _get(self, byte_range: str) -> tuple[bytes, int]:
        request = urllib.request.Request(self.url, headers={"Range": byte_range})
        with urllib.request.urlopen(request, timeout=180) as answer:
            if answer.status != 206:
                raise OSError(f"{self.url}: no range support (HTTP {answer.status})")
            total = int(answer.headers["Content-Range"].rsplit("/", 1)[1])
            return answer.read(), total

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        end = self.block_start + len(self.block)
        if not (self.block_start <= self.pos and self.pos + want <= end):
            last = min(self.size, self.pos + max(want, READ_AHEAD)) - 1
            self.block, _ = self._get(f"bytes={self.pos}-{last}")
            self.block_start = self.pos
        start = self.pos - self.block_start
        buffer[:want] = self.block[start:start + want]
        self.pos += want
        return want


def wheel_metadata(url: str) -> bytes:
    """The METADATA member of a remote wheel, read without downloading the wheel."""
    with zipfile.ZipFile(io.BufferedReader(RemoteFile(url), READ_AHEAD)) as wheel:
        name = next(n for n in wheel.namelist() if _METADATA.match(n))
        return wheel.read(name)


class Mirror:
    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.fetched: list[str] = []  # upstream URLs fetched (not served from the cache)
        self.base = ""

    def _fetch(self, url: str, dest: Path, accept: str | None = None) -> None:
        request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
        part = dest.with_name(dest.name + f".part{threading.get_ident()}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(request, timeout=180) as answer, part.open("wb") as out:
            shutil.copyfileobj(answer, out, 1 << 20)
        part.replace(dest)
        self.fetched.append(url)

    def index(self, project: str) -> bytes:
        dest = self.cache / "simple" / f"{project}.json"
        if not dest.is_file() or time.time() - dest.stat().st_mtime > INDEX_TTL_S:
            self._fetch(f"{PYPI}{project}/", dest, SIMPLE_JSON)
        doc = json.loads(dest.read_bytes())
        for entry in doc.get("files", []):
            if entry["url"].startswith(FILES):
                entry["url"] = f"{self.base}/files/{entry['url'][len(FILES):]}"
            if entry["filename"].endswith(".whl") and not entry.get("core-metadata"):
                entry["core-metadata"] = True  # served by file() from the wheel's own METADATA
        return json.dumps(doc).encode()

    def file(self, path: str) -> Path:
        dest = self.cache / "files" / path
        if dest.is_file():
            return dest
        if path.endswith(".whl.metadata"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + f".part{threading.get_ident()}")
            part.write_bytes(wheel_metadata(FILES + path.removesuffix(".metadata")))
            part.replace(dest)
            self.fetched.append(FILES + path)
        else:
            self._fetch(FILES + path, dest)
        return dest


def _handler(mirror: Mirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            path = self.path.split("?", 1)[0]
            try:
                if path.startswith("/simple/") and path.count("/") == 3:
                    body, kind = mirror.index(path.split("/")[2]), SIMPLE_JSON
                    self.send_response(200)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif path.startswith("/files/") and ".." not in path:
                    local = mirror.file(path[len("/files/"):])
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(local.stat().st_size))
                    self.end_headers()
                    with local.open("rb") as src:
                        shutil.copyfileobj(src, self.wfile, 1 << 20)
                else:
                    self.send_error(404)
            except HTTPError as exc:
                self.send_error(exc.code)

    return Handler


@contextmanager
def pypi_mirror(cache: Path) -> Iterator[Mirror]:
    """Serve the mirror on 127.0.0.1 for the duration of the block; `mirror.base` is its URL."""
    mirror = Mirror(cache)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(mirror))
    mirror.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()
