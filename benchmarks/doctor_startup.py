"""Startup cost of `dsv4setup doctor --snapshot F --json` against `hf env` and the `import typer, rich` floor.

Runs the commands alternately (so machine load hits them alike) and prints the medians and two
ratios: against huggingface_hub's environment report `hf env`, a comparable CLI report (target
<= 1.0x), and against the floor (target < 1.5x). Two more variants say where the time goes:
- the same doctor with only `dsv4setup.cli.doctor` registered instead of every command module
  (dsv4setup.cli.register imports only the named command's module): the difference is what the other
  command modules cost;
- a do-nothing typer command with the same options: typer >= 0.2x coerces options through
  pydantic TypeAdapters, so any typer command pays the pydantic import the floor does not.
Then where the doctor's import time goes (`python -X importtime`): dsv4setup modules and the
heaviest packages. The result goes to benchmarks/results/doctor_startup.json (and docs/performance.md).

    python benchmarks/doctor_startup.py [--runs 15] [--snapshot FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.results import Figure, Ratio, start  # noqa: E402

DEFAULT_SNAPSHOT = REPO / "tests" / "preflight" / "fixtures" / "rtx-pro-6000-maxq-x2.json"
TARGET = 1.5
HF_TARGET = 1.0
FLOOR = "floor   python -c 'import typer, rich'"
HF_ENV = "baseline hf env (huggingface_hub)"
DOCTOR = "doctor  dsv4setup doctor --snapshot F --json"
# The doctor exactly as `dsv4setup` runs it, except that only its own command module is imported.
ONLY_DOCTOR = ("import importlib, sys; import dsv4setup.cli as cli; "
               "cli.register = lambda *_: importlib.import_module('dsv4setup.cli.doctor'); "
               "cli.main(sys.argv[1:])")
# A typer command that does nothing, with the doctor's options: the floor of any typer CLI.
BARE_TYPER = """
import sys
from pathlib import Path
from typing import Annotated
import typer
app = typer.Typer()
@app.command()
def doctor(snapshot: Annotated[Path | None, typer.Option("--snapshot")] = None,
           save_snapshot: Annotated[Path | None, typer.Option("--save-snapshot")] = None,
           workdir: Annotated[Path | None, typer.Option("--workdir")] = None,
           profile: Annotated[str | None, typer.Option("--profile")] = None,
           json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    print("{}")
@app.command()
def other() -> None:
    pass
app(sys.argv[1:])
"""
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # doctor exits 1 when a check fails: still a full run
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed


def import_breakdown(argv: list[str], env: dict[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """(cumulative ms per dsv4setup module imported at startup, ms per top-level package)."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, env=env,
                          check=False)
    ours: dict[str, float] = {}
    packages: dict[str, float] = defaultdict(float)
    for line in proc.stderr.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        self_us, cumulative_us, name = int(match[1]), int(match[2]), match[4]
        if name.startswith("dsv4setup.") and name.count(".") <= 2:
            ours[name] = max(ours.get(name, 0.0), cumulative_us / 1000)
        packages[name.split(".")[0]] += self_us / 1000
    return ours, dict(packages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--snapshot", type=Path, default=DEFAULT_SNAPSHOT)
    args = parser.parse_args()
    run = start("doctor_startup")
    with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, "DSV4SETUP_WORKDIR": workdir, "PYTHONDONTWRITEBYTECODE": "0"}
        cli_args = ["doctor", "--snapshot", str(args.snapshot), "--json"]
        variants = {
            FLOOR: [sys.executable, "-c", "import typer, rich"],
            HF_ENV: [str(Path(sys.executable).with_name("hf")), "env"],
            DOCTOR: [sys.executable, "-m", "dsv4setup", *cli_args],
            "doctor  same, only cli.doctor registered": [sys.executable, "-c", ONLY_DOCTOR, *cli_args],
            "typer   a do-nothing command, same options": [sys.executable, "-c", BARE_TYPER, *cli_args],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for argv in variants.values():  # warm the page cache and .pyc files
            wall(argv, env)
        for _ in range(args.runs):
            for name, argv in variants.items():
                times[name].append(wall(argv, env))
        ours, packages = import_breakdown(variants[DOCTOR], env)
    floor = statistics.median(times[FLOOR])
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:48} median {median * 1000:6.1f} ms  min {min(samples) * 1000:6.1f} ms  "
              f"ratio {median / floor:.2f}x")
    doctor = statistics.median(times[DOCTOR])
    hf_ratio = doctor / statistics.median(times[HF_ENV])
    verdict = "met" if hf_ratio <= HF_TARGET else "NOT met"
    print(f"\ndoctor / hf env {hf_ratio:.2f}x (target <= {HF_TARGET}x: {verdict})")
    ratio = doctor / floor
    print(f"doctor / floor  {ratio:.2f}x (target < {TARGET}x: {'met' if ratio < TARGET else 'NOT met'}; "
          f"{args.runs} runs each)")
    print("\ndsv4setup modules by cumulative import time (ms, -X importtime of one doctor run):")
    for name, ms in sorted(ours.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {ms:7.1f}  {name}")
    print("\nheaviest packages by self import time (ms):")
    for name, ms in sorted(packages.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {ms:7.1f}  {name}")
    run.finish(
        "`doctor --snapshot F --json` vs `hf env` (and vs `import typer, rich`)",
        [Figure(label, round(statistics.median(times[key]) * 1000), "ms")
         for label, key in (("doctor", DOCTOR), ("hf env", HF_ENV), ("floor", FLOOR))],
        [Ratio("doctor / hf env", round(hf_ratio, 2), target=f"<= {HF_TARGET}x `hf env`", met=hf_ratio <= HF_TARGET),
         Ratio("doctor / floor", round(ratio, 2), target=f"< {TARGET}x the floor", met=ratio < TARGET)],
        note=f"Medians of {args.runs} alternating runs each, after one warm-up run.")


if __name__ == "__main__":
    main()
