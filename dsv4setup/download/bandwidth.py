"""The link to the hub, measured: a ranged GET of the checkpoint's largest file (`doctor --bandwidth`).

It goes through the download's own client: the file list from `fetch_plan`, the file's location
from `get_hf_file_metadata`, huggingface_hub's session and headers, the token only to the hub's own
origin (a CDN of another origin gets none). The result is kept in the workdir (`bandwidth.json`),
so `plan` can turn the download's expected time into a measured one; it holds no token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dsv4setup.core.finding import Finding, failed, passed
from dsv4setup.core.fsutil import atomic_write_json
from dsv4setup.core.state import now_iso
from dsv4setup.download.disk import human
from dsv4setup.download.route import model_route
from dsv4setup.hub.access import HubError, explain, hub_endpoint, hub_exceptions
from dsv4setup.profiles.model import ModelSpec

BANDWIDTH_FILE = "bandwidth.json"
DEFAULT_PROBE_BYTES = 256 * 1000 * 1000
FINDING_ID = "host.bandwidth"
READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Bandwidth:
    """One measurement: `bytes` of `file` in `seconds` from `endpoint` (the checkpoint's total for the estimate)."""

    endpoint: str
    repo: str
    revision: str  # the commit the revision resolved to
    allow_patterns: list[str]
    file: str
    bytes: int
    seconds: float  # from the answer's headers to its last byte
    rate_bps: float
    checkpoint_bytes: int  # every file the download fetches, from the same file list
    measured_at: str

    def expected_download_s(self, total_bytes: int | None = None) -> int:
        """Seconds to fetch `total_bytes` (default: this checkpoint) at the measured rate (at least 1)."""
        total = self.checkpoint_bytes if total_bytes is None else total_bytes
        return max(1, round(total / self.rate_bps))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def measure(repo: str, revision: str, allow_patterns: list[str] | None, token: str | None,
            probe_bytes: int = DEFAULT_PROBE_BYTES, clock: Callable[[], float] = time.perf_counter) -> Bandwidth:
    """Time a GET of the first `probe_bytes` (capped at its size) of the largest file the download fetches.

    The clock starts when the answer's headers are in and stops at the last byte: the link's rate,
    not the time of the listing, the redirect or the handshakes. Raises HubError with the hub's meaning of a refusal.
    """
    from huggingface_hub import get_hf_file_metadata, get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    from dsv4setup.download.transfer import fetch_plan, origin

    if probe_bytes < 1:
        raise ValueError(f"probe_bytes must be positive, not {probe_bytes}")
    plan = fetch_plan(repo, revision, allow_patterns, token)
    largest = max(plan.files, key=lambda f: f.size)
    want = min(probe_bytes, largest.size)
    if want < 1:
        raise HubError(f"{repo}@{revision}: its largest file ({largest.path}) is empty: nothing to time",
                       fix="measure with a checkpoint that has weights (--model ORG/NAME)")
    endpoint = hub_endpoint()
    url = hf_hub_url(repo, largest.path, revision=plan.commit, endpoint=endpoint)
    got = 0
    try:
        meta = get_hf_file_metadata(url, token=token or False, endpoint=endpoint)
        headers = build_hf_headers(token=token or False)
        if origin(meta.location) != origin(url):
            headers.pop("authorization", None)  # a signed CDN URL: the token stays with the hub
        headers["Range"] = f"bytes=0-{want - 1}"
        with get_session().stream("GET", meta.location, headers=headers, timeout=60) as response:
            hf_raise_for_status(response)
            started = clock()
            for chunk in response.iter_bytes(READ_CHUNK):
                got += len(chunk)
                if got >= want:
                    break
            ended = clock()
    except hub_exceptions() as exc:
        raise explain(exc, repo, revision, token) from None
    if got == 0:
        raise HubError(f"the hub sent no bytes of {largest.path} ({repo})", fix="run `dsv4setup doctor --bandwidth` "
                                                                                  "again; check the network")
    seconds = max(ended - started, 1e-6)
    got = min(got, want)
    return Bandwidth(endpoint, repo, plan.commit, list(allow_patterns or []), largest.path, got, round(seconds, 6),
                     got / seconds, plan.total_bytes, now_iso())


def duration_words(seconds: float) -> str:
    """~45 s, ~22 min, ~1.5 h."""
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def finding(result: Bandwidth | HubError) -> Finding:
    """The measurement as a doctor check: what it read, and what it means for the download."""
    if isinstance(result, HubError):
        return failed(FINDING_ID, f"could not measure the link to the hub: {result}",
                      result.fix or "check the network and run again")
    took = duration_words(result.expected_download_s())
    return passed(FINDING_ID, f"{human(result.rate_bps)}/s from {result.endpoint} ({human(result.bytes)} of "
                              f"{result.repo}/{result.file} in {result.seconds:.1f} s): the checkpoint "
                              f"({human(result.checkpoint_bytes)}) downloads in {took}; `plan` uses this rate")


def save(workdir_root: Path, result: Bandwidth) -> Path:
    path = workdir_root / BANDWIDTH_FILE
    atomic_write_json(path, {"schema": "dsv4setup.bandwidth/1", **result.to_dict()})
    return path


def load(workdir_root: Path) -> Bandwidth | None:
    """The workdir's last measurement (None: none, or a file this version does not read)."""
    try:
        doc = json.loads((workdir_root / BANDWIDTH_FILE).read_text(encoding="utf-8"))
        if doc.pop("schema", None) != "dsv4setup.bandwidth/1":
            return None
        result = Bandwidth(**doc)
    except (OSError, ValueError, TypeError):
        return None
    return result if result.rate_bps > 0 else None


def download_estimate(model: ModelSpec, expected_s: int | None, measured: Bandwidth | None,
                      endpoint: str) -> dict[str, object]:
    """The download's expected time for `plan`: from this machine's measured rate when one fits, else the
    profile's `expected_s`; `basis` says which (`measured`, `profile`, or `unknown`)."""
    route = model_route(model)
    size = int(model.expected_size_gb * 1e9) if model.expected_size_gb else None
    basis = "profile" if expected_s else "unknown"
    if route != "repo":
        what = "generated here" if route == "generate" else f"already on disk at {model.local_path}"
        return _estimate(basis, expected_s, size, None, None,
                         f"the checkpoint is {what}, nothing to fetch (the profile's expected_s)")
    usable = measured is not None and measured.endpoint == endpoint
    if measured is not None and usable:
        same = (measured.repo, measured.allow_patterns) == (model.repo, list(model.allow_patterns))
        total = measured.checkpoint_bytes if same else size
        if total is not None:
            return _estimate("measured", measured.expected_download_s(total), total, measured.rate_bps,
                             measured.measured_at, f"for {human(total)} at {human(measured.rate_bps)}/s, measured by "
                                               f"`dsv4setup doctor --bandwidth` at {measured.measured_at}")
    rate = size / expected_s if size and expected_s else None
    why = (f"for {human(size)}: " if size else "") + "the profile's expected_s" + (
        f" (~{human(rate)}/s assumed)" if rate else "")
    if measured is not None and not usable:
        why += f"; the rate in {BANDWIDTH_FILE} was measured to {measured.endpoint}, not {endpoint}"
    return _estimate(basis, expected_s, size, rate, None,
                     f"{why}; `dsv4setup doctor --bandwidth` measures this machine's link")


def _estimate(basis: str, seconds: int | None, size: int | None, rate: float | None, measured_at: str | None,
              why: str) -> dict[str, object]:
    took = duration_words(seconds) if seconds else "time unknown"
    sep = " " if why.startswith("for ") else ": "
    return {"basis": basis, "expected_s": seconds, "bytes": size, "rate_bps": rate, "measured_at": measured_at,
            "text": f"download: {took}{sep}{why}"}
