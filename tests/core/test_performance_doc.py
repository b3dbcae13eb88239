"""docs/performance.md's table is what benchmarks/results/*.json render: no figure written by hand twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.render import PAGE, render_file, render_page
from benchmarks.results import RESULTS_DIR, Figure, Ratio, load_results, result_document, write_result

BENCHMARKS = {"overlap", "install", "reup", "readiness", "doctor_startup", "upgrade"}


def test_the_page_is_what_the_results_render() -> None:
    page = PAGE.read_text()
    assert render_page(page, load_results()) == page, "docs/performance.md is stale: run python benchmarks/render.py"


def test_every_benchmark_has_a_result_with_its_provenance() -> None:
    documents = {d["benchmark"]: d for d in load_results()}
    assert set(documents) == BENCHMARKS
    for name, document in documents.items():
        assert (RESULTS_DIR.parent / f"{name}.py").is_file()
        assert document["figures"] and document["ratios"], name
        assert document["commit"] and document["date"][:4].isdigit() and document["machine"], name


def test_a_new_result_re_renders_the_page(tmp_path: Path) -> None:
    """A benchmark's write changes the page's figures; nothing else on the page moves."""
    results = tmp_path / "results"
    results.mkdir()
    for path in RESULTS_DIR.glob("*.json"):
        (results / path.name).write_text(path.read_text())
    page = tmp_path / "performance.md"
    page.write_text(PAGE.read_text())
    document = result_document("reup", "python benchmarks/reup.py --runs 5", "no-op `up` vs `status`",
                               [Figure("up", 3.5, "s wall")], [Ratio("wall", 2.5, target="within 2x", met=False)],
                               "x86_64, 2 cores", "a test")
    write_result(document, results)
    assert render_file(page, results)
    text = page.read_text()
    assert "up **3.5 s wall**; wall: **2.5x**" in text and "within 2x: **NOT met**" in text
    assert "1.74 s wall" not in text
    before, after = PAGE.read_text().split("<!-- results:end -->")[1], text.split("<!-- results:end -->")[1]
    assert before == after
    assert not render_file(page, results)  # rendering again changes nothing


def test_a_result_file_that_is_not_one_is_named(tmp_path: Path) -> None:
    (tmp_path / "reup.json").write_text(json.dumps({"schema": "dsv4setup.benchmark-result/1", "benchmark": "reup"}))
    with pytest.raises(ValueError, match=r"reup.json.*figures"):
        load_results(tmp_path)


def test_a_page_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        render_page("# Performance\n", [])
