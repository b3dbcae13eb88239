"""Run the fault suite and write benchmarks/faults.md from its tally (never typed by hand).

    python -m tests.faults.report                      # runs tests/faults and the security tests, writes the page
    python -m tests.faults.report --tally FILE         # writes the page from a tally an earlier run left
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "benchmarks" / "faults.md"


def run_suite(tally: Path) -> tuple[int, float]:
    """The fault suite, then every test marked `security` (the attacks live beside the code they attack)."""
    started = time.monotonic()
    env = {**os.environ, "DSV4SETUP_FAULT_TALLY": str(tally)}
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    codes = [subprocess.run([*pytest, "tests/faults"], cwd=ROOT, env=env, check=False).returncode,
             subprocess.run([*pytest, "-m", "security", "tests", "--ignore", "tests/faults"], cwd=ROOT, env=env,
                            check=False).returncode]
    return max(codes), time.monotonic() - started


def render(rows: list[dict[str, object]], note: str) -> str:
    attacks = [r for r in rows if r["kind"] == "attack"]
    rows = [r for r in rows if r["kind"] != "attack"]
    kinds: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        kinds[str(row["kind"])].append(row)
    lines = ["# Fault injection: what dsv4setup survives", "",
             "Written by `python -m tests.faults.report` from the tally the fault suite (`tests/faults/`) records",
             "for each fault it injects: real processes, real faults (SIGKILL, a full tmpfs, a read-only mount,",
             "deleted files, racing processes, fuzzed input). " + note, "",
             "| fault | injected | survived | data lost |", "|---|---:|---:|---:|"]
    for kind, items in kinds.items():
        lines.append(f"| {kind} | {len(items)} | {sum(bool(r['survived']) for r in items)} | "
                     f"{sum(bool(r['data_lost']) for r in items)} |")
    lines.append(f"| **all** | {len(rows)} | {sum(bool(r['survived']) for r in rows)} | "
                 f"{sum(bool(r['data_lost']) for r in rows)} |")
    lines += ["", "Each fault (bad-input rows are one per fuzzed example):", ""]
    lines += [f"- {r['kind']}: {r['fault']}: {'survived' if r['survived'] else 'NOT survived'}"
              + (", DATA LOST" if r["data_lost"] else "") for r in rows if r["kind"] != "bad input"]
    return "\n".join(lines + render_attacks(attacks)) + "\n"


def render_attacks(attacks: list[dict[str, object]]) -> list[str]:
    """The security table: each attack the `security` tests tried, what it got, and whether it reached anything."""
    reached = sum(not r["survived"] for r in attacks)
    lines = ["", "## Security: attacks tried", "",
             f"Each row is one attack a `security` test makes for real (a namespace on the cluster link, a "
             f"request without the key, a hostile value in a unit, a record naming a file): {len(attacks)} tried, "
             f"**{reached} reached anything**.", "",
             "| route | attack | what it got | reached |", "|---|---|---|---|"]
    lines += [f"| {r['route']} | {r['fault']} | {r['got']} | {'**YES**' if not r['survived'] else 'no'} |"
              for r in attacks]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tally", type=Path, help="render this tally instead of running the suite")
    args = parser.parse_args()
    if args.tally:
        tally, note = args.tally, "Rendered from an earlier run's tally."
    else:
        tally = Path(tempfile.mkdtemp()) / "tally.jsonl"
        code, seconds = run_suite(tally)
        note = f"Last run: pytest exit {code}, {seconds:.0f} s on {os.cpu_count()} CPUs."
    rows = [json.loads(line) for line in tally.read_text().splitlines() if line.strip()]
    PAGE.write_text(render(rows, note))
    print(PAGE.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
