"""A no-op `dsv4setup up` on a finished cpu-tiny workdir against `dsv4setup status`, side by side.

`up` re-verifies every step on the machine (each postcondition) before it skips it; `status`
checks the same postconditions (status/5) plus one probe of the server, and must be no slower
(`status --no-verify` only reads the state file). Both run alternately (load hits them alike); the ratio of the
medians is printed with its target (within 2x), then what each postcondition costs, measured
in-process, so a slow one is named. The result goes to benchmarks/results/reup.json (and
docs/performance.md).

    python benchmarks/reup.py [--workdir DIR] [--runs 5]

Without --workdir a temporary workdir is made with `up --profile cpu-tiny` (minutes: the
serving venv, the pip toolkit, vLLM's startup) and its server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.cputiny import dsv, finished_workdir  # noqa: E402
from benchmarks.results import Figure, Ratio, start  # noqa: E402
from dsv4setup.core.state import load_state  # noqa: E402
from dsv4setup.core.workdir import Workdir  # noqa: E402
from dsv4setup.runbook import RunbookRequest, build_runbook  # noqa: E402

TARGET = 2.0


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(workdir: Path, *args: str) -> tuple[float, float, str]:
    """(wall s, CPU s of the process and its children, stdout)."""
    cpu = children_cpu_s()
    wall, proc = dsv(workdir, *args)
    return wall, children_cpu_s() - cpu, proc.stdout


def postcondition_costs(workdir: Path) -> list[tuple[str, float, bool, str]]:
    """(step, ms, ok, detail) of each step's inputs + is_done, in this process."""
    runbook, _resolved = build_runbook(RunbookRequest(Workdir(workdir)))
    ctx = runbook.context(load_state(Workdir(workdir).state_file))
    rows = []
    for step in runbook.steps:
        start = time.perf_counter()
        if step.not_applicable(ctx) is None:
            step.inputs(ctx)
            post = step.is_done(ctx)
            ok, detail = post.ok, post.summary
        else:
            ok, detail = True, "not applicable"
        rows.append((step.name, (time.perf_counter() - start) * 1000, ok, detail))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    run = start("reup")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dsv4setup-bench-reup-")) / "wd"
    print(f"finishing cpu-tiny in {workdir} ...", flush=True)
    print(f"up --profile cpu-tiny: {finished_workdir(workdir):.1f} s (0 when it was finished already: verify only)")
    samples: dict[str, list[tuple[float, float]]] = {"up": [], "status": []}
    for _ in range(args.runs):
        wall, cpu, out = timed(workdir, "up", "--yes", "--json")
        actions = {d["action"] for d in json.loads(out)["decisions"]}
        if actions != {"skip"}:
            raise SystemExit(f"not a no-op: {json.loads(out)['decisions']}")
        samples["up"].append((wall, cpu))
        wall, cpu, _ = timed(workdir, "status", "--json")
        samples["status"].append((wall, cpu))
    median_wall = {name: statistics.median(w for w, _ in rows) for name, rows in samples.items()}
    median_cpu = {name: statistics.median(c for _, c in rows) for name, rows in samples.items()}
    for name in samples:
        print(f"{name:6}  median {median_wall[name]:6.2f} s wall, {median_cpu[name]:5.2f} CPU-s  ({args.runs} runs)")
    ratio = median_wall["up"] / median_wall["status"]
    print(f"\nno-op up / status: {ratio:.2f}x (target within {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'})")
    print("\neach postcondition (inputs + is_done, in-process):")
    costs = postcondition_costs(workdir)
    for step, ms, ok, detail in costs:
        print(f"  {step:10} {ms:8.1f} ms  {'ok ' if ok else 'NOT'}  {detail[:90]}")
    run.finish(
        "no-op `up` on a finished cpu-tiny workdir vs `status`",
        [Figure(name, round(median, 2), unit) for name in samples
         for median, unit in ((median_wall[name], "s wall"), (median_cpu[name], "CPU-s"))],
        [Ratio("wall", round(ratio, 2), target=f"within {TARGET:g}x", met=ratio <= TARGET),
         Ratio("CPU", round(median_cpu["up"] / median_cpu["status"], 2))],
        note=f"Medians of {args.runs} alternating runs. Each postcondition in-process: "
             + ", ".join(f"{step} {ms:.0f} ms" for step, ms, _ok, _detail in costs) + ".")
    if args.workdir is None:
        dsv(workdir, "down")


if __name__ == "__main__":
    main()
