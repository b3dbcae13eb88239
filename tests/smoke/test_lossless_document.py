"""`smoke --lossless` in the smoke document (dsv4setup.smoke/3): null unless asked, else the comparison with the
k=0 reference, judged by the profile's tolerance; one generation changed on purpose is named with its excerpts."""

from __future__ import annotations

from dsv4setup.bench.lossless import compare_texts
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.smoke.lossless import lossless_summary
from dsv4setup.smoke.probe import SmokeReport, SmokeRequest

REQUEST = SmokeRequest(base_url="http://127.0.0.1:8011", api_key="EMPTY", model="tiny-mtp", prompt="Hi", expect=None,
                       max_tokens=8, num_speculative_tokens=1, min_acceptance=0.5)
REFERENCE = [" the cat sat on the mat", " 2 + 2 = 4"]


def result(candidate: list[str | None], tolerance: float | None) -> dict:
    compared = compare_texts(REFERENCE, candidate, ["Tell me about cats", "What is 2 + 2?"])
    share = (compared["total"] - compared["identical"]) / compared["total"]
    return {"reference": {"file": "/wd/bench/lossless-reference.json", "run_id": "r1", "created_at": "2026-12-07",
                          "k": 0, "shape": "short", "dataset": {"name": "mix", "sha256": "0" * 64}},
            "num_speculative_tokens": 1, **compared, "tolerance": tolerance,
            "ok": tolerance is None or share <= tolerance}


def test_the_smoke_document_carries_the_comparison_and_null_without_lossless() -> None:
    report = SmokeReport(REQUEST)
    plain = report.to_doc()
    assert plain["schema"] == "dsv4setup.smoke/3" and plain["lossless"] is None
    validate_document(plain)
    report.lossless = result(list(REFERENCE), 0.0)
    report.check("lossless", report.lossless["ok"], lossless_summary(report.lossless))
    doc = report.to_doc()
    validate_document(doc)
    assert doc["checks"][-1]["id"] == "smoke.lossless" and doc["checks"][-1]["status"] == "pass"
    assert "equals the k=0 reference on 2/2 prompts (tolerance 0% of prompts" in doc["checks"][-1]["summary"]


def test_one_changed_generation_fails_a_zero_tolerance_and_the_summary_points_at_the_change() -> None:
    changed = [REFERENCE[0].replace("mat", "hat"), REFERENCE[1]]  # the change made on purpose
    outcome = result(changed, 0.0)
    assert not outcome["ok"] and (outcome["identical"], outcome["total"]) == (1, 2)
    [differing] = outcome["differing"]
    assert differing["position"] == REFERENCE[0].index("mat") and differing["candidate"] == "… sat on the hat"
    summary = lossless_summary(outcome)
    assert "on 1/2 prompts" in summary and "prompt #0 differs at character 20" in summary
    assert result(changed, None)["ok"] and "reported, not judged" in lossless_summary(result(changed, None))
    report = SmokeReport(REQUEST)
    report.lossless = outcome
    report.check("lossless", outcome["ok"], summary)
    doc = report.to_doc()
    validate_document(doc)
    assert not doc["ok"] and doc["checks"][-1]["fix"].startswith("greedy output with MTP differs")
