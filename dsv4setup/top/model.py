"""The `dsv4setup.top/1` document: what a server did between two scrapes.

Rates and counts come from the difference of two scrapes over the seconds between them, never
from totals since start; gauges (running, waiting, KV cache) are the latest scrape's. Every
value the metrics cannot give is null, and `unavailable` says why, per field.
Latency percentiles interpolate linearly inside the histogram bucket that holds the quantile
(as Prometheus' histogram_quantile does) over the observations made in the interval.
"""

from __future__ import annotations

from typing import Any

from dsv4setup.serve.metrics import spec_decode_delta
from dsv4setup.top.scrape import Scrape

TOP_SCHEMA = "dsv4setup.top/1"

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # V1 name, then the V0 one
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
PREEMPTIONS = "vllm:num_preemptions"
SUCCESS = "vllm:request_success"
HTTP_REQUESTS = "http_requests"
TTFT = ("vllm:time_to_first_token_seconds",)
TPOT = ("vllm:request_time_per_output_token_seconds", "vllm:time_per_output_token_seconds",
        "vllm:inter_token_latency_seconds")
QUANTILES = (0.5, 0.9)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of cumulative buckets (le -> count); None without observations.

    Linear inside the bucket that holds the rank; a rank in the +Inf bucket gives the largest
    finite bound (the histogram says no more).
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


class _Builder:
    """Fills the document's sections and the reasons for what is missing."""

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before, self.after = before, after
        self.seconds = max(after.at - before.at, 1e-9)
        self.unavailable: dict[str, str] = {}

    def missing(self, field: str, reason: str) -> None:
        self.unavailable[field] = reason

    def gauge(self, field: str, names: tuple[str, ...] | str) -> float | None:
        for name in (names,) if isinstance(names, str) else names:
            if name in self.after.values:
                return self.after.values[name]
        self.missing(field, f"this vLLM exposes no {names if isinstance(names, str) else names[0]} gauge")
        return None

    def delta(self, field: str, name: str) -> float | None:
        if name not in self.after.values:
            self.missing(field, f"this vLLM exposes no {name} counter")
            return None
        return max(self.after.values[name] - self.before.values.get(name, 0.0), 0.0)

    def rate(self, field: str, name: str) -> float | None:
        delta = self.delta(field, name)
        return None if delta is None else round(delta / self.seconds, 2)

    def errors(self) -> dict[str, float | None]:
        after, before = self.after.labelled, self.before.labelled
        failed = None
        if SUCCESS in after:
            reasons = ("error", "abort")
            failed = sum(after[SUCCESS].get(r, 0.0) - before.get(SUCCESS, {}).get(r, 0.0) for r in reasons)
        else:
            self.missing("errors.requests_failed", f"this vLLM exposes no {SUCCESS} counter with finished_reason")
        http = None
        if HTTP_REQUESTS in after:
            http = sum(v - before.get(HTTP_REQUESTS, {}).get(k, 0.0) for k, v in after[HTTP_REQUESTS].items()
                       if k.startswith("5"))
        else:
            self.missing("errors.http_5xx", "this vLLM exposes no http_requests_total counter")
        return {"requests_failed": failed, "http_5xx": http}

    def latency(self, field: str, names: tuple[str, ...]) -> dict[str, float | None]:
        name = next((n for n in names if n in self.after.buckets), None)
        empty: dict[str, float | None] = {f"p{int(q * 100)}": None for q in QUANTILES}
        if name is None:
            self.missing(field, f"this vLLM exposes no {names[0]} histogram")
            return empty
        old = self.before.buckets.get(name, {})
        window = {le: count - old.get(le, 0.0) for le, count in self.after.buckets[name].items()}
        if not window or max(window.values()) <= 0:
            self.missing(field, "no request was measured in the interval")
            return empty
        return {f"p{int(q * 100)}": _round(histogram_quantile(q, window)) for q in QUANTILES}

    def mtp(self) -> dict[str, Any]:
        before, after = self.before.spec, self.after.spec
        if after is None:
            self.missing("mtp", "no spec_decode counters: speculative decoding (MTP) is off on this server")
            return _no_mtp()
        delta = spec_decode_delta(before or type(after)(0.0, 0.0, 0.0), after)
        if delta.drafts <= 0:
            self.missing("mtp.acceptance_rate", "no drafts in the interval (the server was idle)")
        return delta.to_dict()


def top_document(before: Scrape, after: Scrape, *, base_url: str, workdir: str | None) -> dict[str, Any]:
    """The `dsv4setup.top/1` document of the interval between two scrapes of the same server."""
    b = _Builder(before, after)
    ok = after.health == 200 and after.metrics_ok
    if not after.metrics_ok:
        b.missing("metrics", after.error or "no metrics")
        counts = None
    else:
        counts = {
            "requests": {"running": b.gauge("requests.running", RUNNING),
                         "waiting": b.gauge("requests.waiting", WAITING)},
            "tokens_per_s": {"prompt": b.rate("tokens_per_s.prompt", PROMPT_TOKENS),
                             "generation": b.rate("tokens_per_s.generation", GENERATION_TOKENS)},
            "mtp": b.mtp(),
            "kv_cache_usage": _round(b.gauge("kv_cache_usage", KV_CACHE)),
            "preemptions": b.delta("preemptions", PREEMPTIONS),
            "errors": b.errors(),
            "latency_s": {"ttft": b.latency("latency_s.ttft", TTFT), "tpot": b.latency("latency_s.tpot", TPOT)},
        }
    health = "ok" if after.health == 200 else "down" if after.health is None else f"HTTP {after.health}"
    return {"schema": TOP_SCHEMA, "ok": ok, "workdir": workdir, "base_url": base_url,
            "health": {"status": health, "http_status": after.health},
            "interval_s": round(after.at - before.at, 3), **(counts or _empty_counts()),
            "unavailable": b.unavailable}


def _no_mtp() -> dict[str, Any]:
    return {"drafts": None, "draft_tokens": None, "accepted": None, "acceptance_rate": None,
            "mean_acceptance_length": None, "per_position_rates": []}


def _empty_counts() -> dict[str, Any]:
    none2 = {"p50": None, "p90": None}
    return {"requests": {"running": None, "waiting": None}, "tokens_per_s": {"prompt": None, "generation": None},
            "mtp": _no_mtp(),
            "kv_cache_usage": None, "preemptions": None, "errors": {"requests_failed": None, "http_5xx": None},
            "latency_s": {"ttft": dict(none2), "tpot": dict(none2)}}
