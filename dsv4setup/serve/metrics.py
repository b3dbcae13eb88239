"""vLLM's Prometheus metrics: speculative-decoding counters and what their deltas say.

Parsed with prometheus_client's text parser. Depending on how the exposition declares a
counter, the parser names the family with or without `_total`; samples are therefore matched
by name with `_total` stripped, and summed over label sets (model_name, engine).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from dsv4setup.core.loopback import direct_opener

DRAFTS = "vllm:spec_decode_num_drafts"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens"
ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"


def _base(name: str) -> str:
    return name[: -len("_total")] if name.endswith("_total") else name


@dataclass(frozen=True)
class SpecDecodeCounters:
    drafts: float
    draft_tokens: float
    accepted: float
    per_position: dict[int, float] = field(default_factory=dict)


def parse_spec_decode(text: str) -> SpecDecodeCounters | None:
    """The spec-decode counters in a /metrics text; None when absent (speculative decoding off)."""
    sums: dict[str, float] = {}
    per_pos: dict[int, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = _base(sample.name)
            if name == ACCEPTED_PER_POS and "position" in sample.labels:
                pos = int(sample.labels["position"])
                per_pos[pos] = per_pos.get(pos, 0.0) + sample.value
            elif name in (DRAFTS, DRAFT_TOKENS, ACCEPTED):
                sums[name] = sums.get(name, 0.0) + sample.value
    if DRAFTS not in sums:
        return None
    return SpecDecodeCounters(sums[DRAFTS], sums.get(DRAFT_TOKENS, 0.0), sums.get(ACCEPTED, 0.0), per_pos)


@dataclass(frozen=True)
class SpecDecodeDelta:
    drafts: float
    draft_tokens: float
    accepted: float
    acceptance_rate: float | None  # accepted / draft tokens
    mean_acceptance_length: float | None  # 1 + accepted / drafts (tokens per target step)
    per_position_rates: list[float]  # accepted at position i / drafts

    def to_dict(self) -> dict[str, object]:
        return {"drafts": self.drafts, "draft_tokens": self.draft_tokens, "accepted": self.accepted,
                "acceptance_rate": self.acceptance_rate, "mean_acceptance_length": self.mean_acceptance_length,
                "per_position_rates": self.per_position_rates}


def spec_decode_delta(before: SpecDecodeCounters, after: SpecDecodeCounters) -> SpecDecodeDelta:
    drafts = after.drafts - before.drafts
    draft_tokens = after.draft_tokens - before.draft_tokens
    accepted = after.accepted - before.accepted
    positions = sorted(after.per_position)
    per_pos = [after.per_position[i] - before.per_position.get(i, 0.0) for i in positions]
    return SpecDecodeDelta(
        drafts=drafts, draft_tokens=draft_tokens, accepted=accepted,
        acceptance_rate=round(accepted / draft_tokens, 4) if draft_tokens > 0 else None,
        mean_acceptance_length=round(1 + accepted / drafts, 4) if drafts > 0 else None,
        per_position_rates=[round(v / drafts, 4) if drafts > 0 else 0.0 for v in per_pos])


def fetch_metrics(base_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> str:
    """GET <base_url>/metrics as text (OSError when unreachable); never through a proxy (it carries the key)."""
    request = urllib.request.Request(f"{base_url}/metrics")
    if api_key and api_key != "EMPTY":
        request.add_header("Authorization", f"Bearer {api_key}")
    with direct_opener().open(request, timeout=timeout_s) as response:
        body: bytes = response.read()
    return body.decode("utf-8", errors="replace")
