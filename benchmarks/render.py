"""Render docs/performance.md's results table from benchmarks/results/*.json.

The table and the conditions under it sit between two markers in the page; everything else on
the page is prose kept by hand. Each benchmark re-renders the page when it writes its result;
run this after editing the page or a result file by other means.

    python benchmarks/render.py           # rewrite the part between the markers
    python benchmarks/render.py --check   # exit 1 when the page is not what the results render
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.results import RESULTS_DIR, load_results  # noqa: E402

PAGE = REPO_ROOT / "docs" / "performance.md"
BEGIN = "<!-- results:begin -->"
NOTICE = "<!-- written by `python benchmarks/render.py` from benchmarks/results/*.json: edit those, not this -->"
END = "<!-- results:end -->"
ORDER = ["overlap", "install", "reup", "readiness", "doctor_startup"]  # the rest follow by name


def number(value: float) -> str:
    return f"{value:g}"


def figures_cell(document: dict[str, Any]) -> str:
    figures = [f"{f['label']} **{number(f['value'])}{' ' + f['unit'] if f['unit'] else ''}**"
               for f in document["figures"]]
    ratios = [f"{r['label']}: **{number(r['value'])}{'' if r['unit'] == 'x' else ' '}{r['unit']}**"
              for r in document["ratios"]]
    return ", ".join(figures) + ("; " + ", ".join(ratios) if ratios else "")


def target_cell(document: dict[str, Any]) -> str:
    targets = [f"{r['target']}: **{'met' if r['met'] else 'NOT met'}**"
               for r in document["ratios"] if r["target"] and r["met"] is not None]
    return "; ".join(targets) or "-"


def conditions(document: dict[str, Any]) -> str:
    samples = [f"{f['label']} {', '.join(number(s) for s in f['samples'])}{' ' + f['unit'] if f['unit'] else ''}"
               for f in document["figures"] if f["samples"]]
    text = f"- `{document['benchmark']}`: {document['machine']}."
    if samples:
        text += f" Single runs: {'; '.join(samples)}."
    if document["note"]:
        text += f" {document['note']}"
    return text


def sort_key(document: dict[str, Any]) -> tuple[int, str]:
    name = document["benchmark"]
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def render_table(documents: list[dict[str, Any]]) -> str:
    documents = sorted(documents, key=sort_key)
    lines = [NOTICE, "", "| benchmark | what is compared | result | target | measured |", "|---|---|---|---|---|"]
    for d in documents:
        cells = [f"`{d['command']}`", d["compares"], figures_cell(d), target_cell(d),
                 f"{d['date'][:10]}, `{d['commit']}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Conditions of each measurement (the machine as the benchmark read it, then its note):", ""]
    lines += [conditions(d) for d in documents]
    return "\n".join(lines)


def render_page(page: str, documents: list[dict[str, Any]]) -> str:
    """The page with the part between the markers replaced by the table of `documents`."""
    head, begin, rest = page.partition(BEGIN)
    _old, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{PAGE.name} lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n{render_table(documents)}\n{END}{tail}"


def render_file(page: Path = PAGE, results_dir: Path = RESULTS_DIR) -> bool:
    """Rewrite the page from the results; True when it changed."""
    old = page.read_text()
    new = render_page(old, load_results(results_dir))
    if new != old:
        page.write_text(new)
    return new != old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the page is stale")
    args = parser.parse_args()
    try:
        if args.check:
            stale = render_page(PAGE.read_text(), load_results()) != PAGE.read_text()
            verdict = "stale: run python benchmarks/render.py" if stale else "up to date"
            print(f"{PAGE.relative_to(REPO_ROOT)}: {verdict}")
            raise SystemExit(1 if stale else 0)
        changed = render_file()
    except (OSError, ValueError) as exc:  # a missing page or marker, a result file that is not one
        raise SystemExit(f"render.py: {exc}") from None
    print(f"{PAGE.relative_to(REPO_ROOT)}: {'re-rendered' if changed else 'already up to date'}")


if __name__ == "__main__":
    main()
