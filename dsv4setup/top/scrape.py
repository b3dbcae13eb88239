"""One scrape of a vLLM server: its /health status and its /metrics, parsed with prometheus_client.

A Scrape keeps what `top` needs by metric name (with `_total` stripped, summed over label sets
such as model_name and engine): counters and gauges as numbers, histograms as cumulative
bucket counts, labelled counters (finished_reason, HTTP status) per label value.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from dsv4setup.core.loopback import direct_opener
from dsv4setup.serve.metrics import ACCEPTED_PER_POS, SpecDecodeCounters, parse_spec_decode

# label of a labelled counter kept per value: metric -> label name
LABELLED = {"vllm:request_success": "finished_reason", "http_requests": "status"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def base_name(name: str) -> str:
    for suffix in ("_total", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class Scrape:
    at: float  # time.monotonic() of the scrape
    health: int | None  # HTTP status of /health, None when nothing answered
    error: str | None = None  # why /metrics could not be read
    values: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # histogram -> le -> cumulative count
    labelled: dict[str, dict[str, float]] = field(default_factory=dict)  # counter -> label value -> count
    spec: SpecDecodeCounters | None = None

    @property
    def metrics_ok(self) -> bool:
        return self.error is None


def parse_metrics(text: str, at: float, health: int | None) -> Scrape:
    """A Scrape of a /metrics text (prometheus_client's parser; ValueError on a malformed text)."""
    values: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    labelled: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if family.type == "histogram" and sample.name.endswith("_bucket"):
                hist = buckets.setdefault(family.name, {})
                le = float(sample.labels["le"])
                hist[le] = hist.get(le, 0.0) + sample.value
                continue
            name = base_name(sample.name)
            if name == ACCEPTED_PER_POS:
                continue  # kept by parse_spec_decode
            values[name] = values.get(name, 0.0) + sample.value
            label = LABELLED.get(name)
            if label and label in sample.labels:
                per = labelled.setdefault(name, {})
                per[sample.labels[label]] = per.get(sample.labels[label], 0.0) + sample.value
    return Scrape(at=at, health=health, values=values, buckets=buckets, labelled=labelled,
                  spec=parse_spec_decode(text))


def _get(url: str, api_key: str | None, timeout_s: float) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if api_key and api_key != "EMPTY":
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with direct_opener().open(request, timeout=timeout_s) as response:  # never a proxy: it carries the key
            body: bytes = response.read()
            return int(response.status), body.decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def scrape(base_url: str, api_key: str | None = None, timeout_s: float = 5.0) -> Scrape:
    """GET /health and /metrics of base_url; a server that does not answer gives a Scrape with `error`."""
    at = time.monotonic()
    try:
        health, _ = _get(f"{base_url}/health", api_key, timeout_s)
    except OSError:
        health = None
    try:
        status, text = _get(f"{base_url}/metrics", api_key, timeout_s)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return Scrape(at=at, health=health, error=f"{base_url}/metrics does not answer ({reason})")
    if status != 200:
        hint = " (the API key is wrong or missing)" if status == 401 else ""
        return Scrape(at=at, health=health, error=f"{base_url}/metrics answered HTTP {status}{hint}")
    try:
        return parse_metrics(text, at, health)
    except ValueError as exc:
        return Scrape(at=at, health=health, error=f"{base_url}/metrics is not Prometheus text: {exc}")
