"""Bare to verified in the time of the longest branch: `up --sequential` against `up` (issue #28).

A local hub server (tests/checkpoint/hubserver.py, a subprocess) serves the generated tiny
DeepSeek-V3 + MTP checkpoint padded with `original/padding-*.bin` files (real repos carry such
folders; the profile's allow_patterns gain `original/*`; vLLM and the checkpoint lint read only
the top level), throttled to `--rate-mbps`, so the
download takes about `--download-s` seconds: about as long as the cpu-tiny toolkit + vllm steps.
Then, one after the other in one run, each in its own empty workdir, the real CLI as a user runs it:
`dsv4setup up --yes` and `dsv4setup up --sequential --yes` (cpu-tiny with the model from that hub),
each followed by `down`. The overlapped run goes first: whatever the first run leaves warm (page
cache, uv's cache) then speeds the sequential run, whose step times make the bound, so the ratio
errs against the overlapped run.

Printed: both wall times; the lower bound preflight + max(download, build) + checkpoint + serve +
smoke (build = toolkit + vllm + patches) from the sequential run's step records (each step alone,
uncontended) and from the overlapped run's own; the overlapped `up` against both (target <= 1.15x
against the first). The CPU of each branch: a sampler reads the `up` process tree's CPU time (and the
hub server's) every 0.5 s and gives each interval to the steps the state file shows running; the
sequential run gives each branch's own CPU, the overlapped run how busy the cores were while both
branches ran, which says whether the CPU or the longer branch bounds the run. The build branch's
wall time alone and beside the download says whether the download starves the install.

The result goes to benchmarks/results/overlap.json (and docs/performance.md).

    python benchmarks/overlap.py [--rate-mbps 2] [--download-s 30] [--keep DIR]
    python benchmarks/overlap.py --analyze DIR   # print the figures of a kept run again; writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.results import Figure, Ratio, start  # noqa: E402
from dsv4setup.profiles.model import ModelSpec  # noqa: E402
from dsv4setup.tinymodel import generate_tiny_checkpoint  # noqa: E402
from tests.checkpoint.hubserver import free_port  # noqa: E402

REPO_ID = "dsv4setup-bench/tiny-deepseek-v3-mtp-padded"
BUILD = ("toolkit", "vllm", "patches")  # the branch beside the download
SERIAL = ("preflight", "checkpoint", "serve", "smoke")  # before both branches, or after both
PADDING_FILES = 4  # the download's workers fetch files in parallel: several, like a sharded checkpoint
PROBE_WORKERS = (8, 2)  # the downloader's default parallel connections, and a cap
TARGET = 1.15
SAMPLE_S = 0.5
MB = 1_000_000


def make_checkpoint(root: Path, padding_bytes: int) -> Path:
    """The tiny checkpoint plus `padding_bytes` of random data in original/ (random: nothing compresses it)."""
    generate_tiny_checkpoint(root)
    (root / "original").mkdir(exist_ok=True)
    each = padding_bytes // PADDING_FILES
    for i in range(PADDING_FILES):
        with (root / "original" / f"padding-{i + 1:05d}-of-{PADDING_FILES:05d}.bin").open("wb") as fh:
            left = each
            while left:
                n = min(left, 8 * 1024 * 1024)
                fh.write(os.urandom(n))
                left -= n
    return root


def start_hub(checkpoint: Path, rate_bps: float | None, log: Path) -> tuple[subprocess.Popen[str], str]:
    """The hub server as a process of its own (its CPU is measured apart from `up`'s); (process, endpoint)."""
    rate = ["--rate", str(rate_bps)] if rate_bps else []
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "checkpoint" / "hubserver.py"),
                             "--repo", f"{REPO_ID}=main:{checkpoint}", *rate],
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("endpoint="):
        proc.kill()
        raise SystemExit(f"the hub server did not start: {line!r} (see {log})")
    return proc, line.removeprefix("endpoint=")


def sequential_flag_exists() -> bool:
    """`up --sequential` comes with the concurrent engine; before it `up` is sequential anyway."""
    proc = subprocess.run([sys.executable, "-m", "dsv4setup", "up", "--help"], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, check=True)
    return "--sequential" in proc.stdout


@dataclass
class Sample:
    t: float  # seconds since the run started
    cpu_up: float  # CPU seconds of the `up` process tree so far
    cpu_hub: float  # CPU seconds of the hub server so far
    running: list[str]


@dataclass
class RunRecord:
    label: str
    argv: list[str]
    wall_s: float
    cpu_s: float  # the whole `up` tree, from the kernel's accounting of the reaped process
    hub_cpu_s: float
    samples: list[Sample] = field(default_factory=list)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # the state file's step records


def tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of a process, its reaped children and its live descendants."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def running_steps(state_file: Path) -> list[str]:
    try:
        steps = json.loads(state_file.read_text())["steps"]
    except (OSError, ValueError, KeyError):
        return []
    return sorted(name for name, record in steps.items() if record.get("status") == "running")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_up(label: str, workdir: Path, endpoint: str, hub: subprocess.Popen[str], extra: list[str],
           env_extra: dict[str, str] | None = None) -> RunRecord:
    """`dsv4setup up ... --yes` from an empty workdir, sampled; then `down`."""
    workdir.mkdir(parents=True)
    overrides = {"profile": "cpu-tiny", "serve": {"port": free_port(), "ready_timeout_s": 1200},
                 "model": {"repo": REPO_ID, "revision": "main", "generate": None,
                           "allow_patterns": [*ModelSpec().allow_patterns, "original/*"]}}
    (workdir / "dsv4setup.yaml").write_text(yaml.safe_dump(overrides))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "DSV4SETUP_RUNBOOK")}
    env.update({"DSV4SETUP_WORKDIR": str(workdir), "HF_ENDPOINT": endpoint, "NO_COLOR": "1",
                "HF_HOME": str(workdir.parent / f"{label}-hf-home"),
                "XDG_STATE_HOME": str(workdir.parent / f"{label}-state"), **(env_extra or {})})
    argv = [sys.executable, "-m", "dsv4setup", "up", *extra, "--yes", "--json"]
    hub_ps = psutil.Process(hub.pid)
    hub_start = sum(hub_ps.cpu_times()[:2])
    cpu_start = children_cpu()
    samples: list[Sample] = []
    started = time.perf_counter()
    with (workdir.parent / f"{label}-up.out").open("w") as out, (workdir.parent / f"{label}-up.err").open("w") as err:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                cpu = tree_cpu(ps)
            except psutil.Error:
                break
            samples.append(Sample(time.perf_counter() - started, cpu, sum(hub_ps.cpu_times()[:2]) - hub_start,
                                  running_steps(workdir / "state.json")))
            time.sleep(SAMPLE_S)
        code = proc.wait()
    wall = time.perf_counter() - started
    cpu_total = children_cpu() - cpu_start
    hub_cpu = sum(hub_ps.cpu_times()[:2]) - hub_start
    subprocess.run([sys.executable, "-m", "dsv4setup", "down"], env=env, capture_output=True, check=False,
                   stdin=subprocess.DEVNULL, timeout=300)
    if code != 0:
        raise SystemExit(f"{' '.join(argv[2:])} failed ({code}): see {workdir.parent / f'{label}-up.err'}")
    steps = json.loads((workdir / "state.json").read_text())["steps"]
    return RunRecord(label, argv[2:], wall, cpu_total, hub_cpu, samples, steps)


def download_cpu_by_workers(root: Path, checkpoint: Path, workers: tuple[int, ...]) -> dict[int, RunRecord]:
    """`up --only download` of the padded checkpoint from an unthrottled hub with each number of parallel
    connections: what the download costs the CPU per byte, and whether fewer connections cost less."""
    hub, endpoint = start_hub(checkpoint, None, root / "hub-unthrottled.log")
    try:
        return {n: run_up(f"download-{n}-workers", root / f"download-{n}-workers" / "wd", endpoint, hub,
                          ["--only", "download"], {"DSV4SETUP_DOWNLOAD_WORKERS": str(n)}) for n in workers}
    finally:
        hub.terminate()
        hub.wait(timeout=30)


# --- analysis (pure: from the records) ------------------------------------------------------------
def run_s(record: RunRecord, step: str) -> float:
    value = (record.steps.get(step) or {}).get("run_s")
    return float(value) if value is not None else 0.0


def build_s(record: RunRecord) -> float:
    return sum(run_s(record, s) for s in BUILD)


def lower_bound(record: RunRecord) -> float:
    """preflight + max(download, build) + checkpoint + serve + smoke, from this run's step records."""
    return sum(run_s(record, s) for s in SERIAL) + max(run_s(record, "download"), build_s(record))


def cpu_by_step(record: RunRecord) -> dict[str, float]:
    """CPU seconds (`up` tree + hub server) of each interval, given to the steps running in it
    (split evenly when several run; `(between steps)` when none)."""
    spent: dict[str, float] = {}
    for before, after in zip(record.samples, record.samples[1:], strict=False):
        delta = max(0.0, after.cpu_up - before.cpu_up) + max(0.0, after.cpu_hub - before.cpu_hub)
        names = after.running or ["(between steps)"]
        for name in names:
            spent[name] = spent.get(name, 0.0) + delta / len(names)
    return spent


def both_running(record: RunRecord) -> tuple[float, float]:
    """(seconds during which a build step and the download ran at once, CPU seconds spent in them)."""
    seconds = cpu = 0.0
    for before, after in zip(record.samples, record.samples[1:], strict=False):
        if "download" in after.running and any(s in after.running for s in BUILD):
            seconds += after.t - before.t
            cpu += max(0.0, after.cpu_up - before.cpu_up) + max(0.0, after.cpu_hub - before.cpu_hub)
    return seconds, cpu


def finished_first(record: RunRecord) -> str:
    """Which branch ended last in the overlapped run: that one held up the checkpoint step."""
    ends = {name: record.steps.get(name, {}).get("finished_at") or "" for name in ("download", "patches")}
    return "download" if ends["download"] > ends["patches"] else "build"


def analyse(seq: RunRecord, ovl: RunRecord, cores: int) -> dict[str, Any]:
    seq_cpu, ovl_cpu = cpu_by_step(seq), cpu_by_step(ovl)
    download_cpu = seq_cpu.get("download", 0.0)
    build_cpu = sum(seq_cpu.get(s, 0.0) for s in BUILD)
    window, window_cpu = both_running(ovl)
    busy = window_cpu / (cores * window) if window else 0.0
    bound_seq, bound_own = lower_bound(seq), lower_bound(ovl)
    longer = "download" if run_s(seq, "download") > build_s(seq) else "build"
    return {
        "wall_sequential": seq.wall_s, "wall_overlapped": ovl.wall_s,
        "bound_sequential_steps": bound_seq, "bound_own_steps": bound_own,
        "ratio": ovl.wall_s / bound_seq, "ratio_own": ovl.wall_s / bound_own,
        "speedup": seq.wall_s / ovl.wall_s,
        "download_s": run_s(seq, "download"), "build_s": build_s(seq),
        "download_s_overlapped": run_s(ovl, "download"), "build_s_overlapped": build_s(ovl),
        "download_cpu": download_cpu, "build_cpu": build_cpu,
        "hub_cpu_sequential": seq.hub_cpu_s, "cpu_sequential": seq.cpu_s, "cpu_overlapped": ovl.cpu_s,
        "window_s": window, "window_cpu": window_cpu, "busy": busy, "cores": cores,
        "longer_branch": longer, "last_branch_overlapped": finished_first(ovl),
        "steps_sequential": {s: run_s(seq, s) for s in seq.steps}, "steps_overlapped": {s: run_s(ovl, s)
                                                                                          for s in ovl.steps},
        "cpu_steps_overlapped": ovl_cpu,
    }


def per_gb(probes: list[RunRecord]) -> dict[int, tuple[float, float, float]]:
    """Per number of connections: (MB/s, CPU-s per GB of the download step and the hub, bytes fetched)."""
    found = {}
    for record in probes:
        workers = int(record.label.split("-")[1])
        fetched = float((record.steps.get("download") or {}).get("outputs", {}).get("fetched_bytes") or 0)
        seconds = run_s(record, "download")
        cpu = cpu_by_step(record).get("download", 0.0)
        if fetched and seconds:
            found[workers] = (fetched / seconds / MB, cpu / (fetched / 1e9), fetched)
    return found


def bounded_by(a: dict[str, Any]) -> str:
    if a["busy"] >= 0.9:
        return (f"the CPU: while both branches ran, the {a['cores']} cores were {a['busy']:.0%} busy, so the "
                "branches slowed each other")
    return (f"the {a['last_branch_overlapped']} branch (it ended last; the cores were {a['busy']:.0%} busy while "
            "both ran)")


def report(a: dict[str, Any], sequential_flag: bool, probes: dict[int, tuple[float, float, float]]) -> list[str]:
    def steps(times: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in times.items() if v)

    slow = (a["build_s_overlapped"] / a["build_s"] - 1) * 100 if a["build_s"] else 0.0
    lines = [
        f"up --sequential: {a['wall_sequential']:.1f} s wall ({steps(a['steps_sequential'])})",
        f"up (overlapped): {a['wall_overlapped']:.1f} s wall ({steps(a['steps_overlapped'])})",
        f"speed-up: {a['speedup']:.2f}x",
        f"lower bound from the sequential run's steps: preflight + max(download {a['download_s']:.1f}, "
        f"build {a['build_s']:.1f}) + checkpoint + serve + smoke = {a['bound_sequential_steps']:.1f} s",
        f"overlapped / bound: {a['ratio']:.2f}x (target <= {TARGET}x: {'met' if a['ratio'] <= TARGET else 'NOT met'});"
        f" against its own step times ({a['bound_own_steps']:.1f} s): {a['ratio_own']:.2f}x",
        f"CPU (sequential run, each branch alone): download branch {a['download_cpu']:.1f} CPU-s in "
        f"{a['download_s']:.1f} s (hub server included), build branch {a['build_cpu']:.1f} CPU-s in "
        f"{a['build_s']:.1f} s; whole up: {a['cpu_sequential']:.1f} CPU-s sequential, {a['cpu_overlapped']:.1f} "
        "overlapped (hub server excluded)",
        f"both branches at once for {a['window_s']:.1f} s: {a['window_cpu']:.1f} CPU-s = {a['busy']:.0%} of "
        f"{a['cores']} cores",
        f"build branch beside the download: {a['build_s_overlapped']:.1f} s vs {a['build_s']:.1f} s alone "
        f"({slow:+.0f} %); download {a['download_s_overlapped']:.1f} s vs {a['download_s']:.1f} s alone",
        f"bounded by: {bounded_by(a)}",
    ]
    for workers, (rate, cpu_gb, fetched) in sorted(probes.items(), reverse=True):
        lines.append(f"download alone, unthrottled, {workers} connections: {fetched / MB:.0f} MB at {rate:.0f} MB/s, "
                     f"{cpu_gb:.1f} CPU-s per GB (download step and hub server)")
    if not sequential_flag:
        lines.append("NOTE: this dsv4setup has no `up --sequential`: both runs were sequential (development run)")
    return lines


def save(keep: Path, records: list[RunRecord], meta: dict[str, Any]) -> None:
    (keep / "records.json").write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in records]}, indent=1))


def load(keep: Path) -> tuple[list[RunRecord], dict[str, Any]]:
    doc = json.loads((keep / "records.json").read_text())
    runs = [RunRecord(**{**r, "samples": [Sample(**s) for s in r["samples"]]}) for r in doc["runs"]]
    return runs, doc["meta"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-mbps", type=float, default=2.0, help="the hub's link, MB/s (default 2)")
    parser.add_argument("--download-s", type=float, default=30.0,
                        help="seconds the download should take at that rate (default 30: the cpu-tiny toolkit + "
                             "vllm steps took 29 s on 2 cores with uv's cache warm)")
    parser.add_argument("--keep", type=Path, help="keep the workdirs, logs and sampled records in this directory")
    parser.add_argument("--analyze", type=Path, help="print the figures of a run kept with --keep; writes nothing")
    args = parser.parse_args()
    if args.analyze:
        (ovl, seq, *probe_runs), meta = load(args.analyze)
        print("\n".join(report(analyse(seq, ovl, meta["cores"]), meta["sequential_flag"], per_gb(probe_runs))))
        return
    result = start("overlap")
    root = args.keep or Path(tempfile.mkdtemp(prefix="dsv4setup-bench-overlap-"))
    root.mkdir(parents=True, exist_ok=True)
    rate = args.rate_mbps * MB
    padding = int(rate * args.download_s)
    print(f"checkpoint: tiny model + {padding / MB:.0f} MB padding, served at {args.rate_mbps:g} MB/s", flush=True)
    checkpoint = make_checkpoint(root / "hub-src", padding)
    flag = sequential_flag_exists()
    print(f"the download alone, unthrottled, with {' and '.join(map(str, PROBE_WORKERS))} connections ...", flush=True)
    probes = download_cpu_by_workers(root, checkpoint, PROBE_WORKERS)
    hub, endpoint = start_hub(checkpoint, rate, root / "hub.log")
    records: list[RunRecord] = []
    try:
        for label, extra in (("overlapped", []), ("sequential", ["--sequential"] if flag else [])):
            print(f"{label}: dsv4setup up {' '.join(extra)} ...", flush=True)
            records.append(run_up(label, root / label / "wd", endpoint, hub, extra))
            print(f"  {records[-1].wall_s:.1f} s", flush=True)
    finally:
        hub.terminate()
        hub.wait(timeout=30)
    cores = os.cpu_count() or 1
    meta = {"cores": cores, "sequential_flag": flag, "rate_bps": rate, "padding_bytes": padding}
    save(root, [*records, *probes.values()], meta)
    a = analyse(records[1], records[0], cores)
    costs = per_gb(list(probes.values()))
    lines = report(a, flag, costs)
    print("\n" + "\n".join(lines))
    if not flag:
        print(f"(no result written: a development run; records in {root})")
        return
    result.finish(
        f"`up --sequential` vs `up` from empty on cpu-tiny, the checkpoint (+{padding / MB:.0f} MB) from a local hub "
        f"at {args.rate_mbps:g} MB/s; bound: preflight + max(download, build) + checkpoint + serve + smoke",
        [Figure("sequential", round(a["wall_sequential"], 1), "s"),
         Figure("overlapped", round(a["wall_overlapped"], 1), "s"),
         Figure("bound", round(a["bound_sequential_steps"], 1), "s"),
         Figure("download", round(a["download_s"], 1), "s"), Figure("build", round(a["build_s"], 1), "s"),
         Figure("download CPU", round(a["download_cpu"], 1), "CPU-s"),
         Figure("build CPU", round(a["build_cpu"], 1), "CPU-s"),
         *[Figure(f"download CPU, {n} connections", round(cost[1], 1), "CPU-s/GB") for n, cost in sorted(
             costs.items(), reverse=True)]],
        [Ratio("overlapped / bound", round(a["ratio"], 2), target=f"<= {TARGET}x", met=a["ratio"] <= TARGET),
         Ratio("sequential / overlapped", round(a["speedup"], 2))],
        note=(f"One run each, the overlapped one first (what it leaves warm helps the sequential run, whose step "
              f"times make the bound). Bound from the sequential run's step records (each step alone); "
              f"against the overlapped run's own step times: {a['ratio_own']:.2f}x. Both branches ran at once for "
              f"{a['window_s']:.0f} s with the {cores} cores {a['busy']:.0%} busy; bounded by "
              f"{bounded_by(a)}. The build branch took {a['build_s_overlapped']:.1f} s beside the download, "
              f"{a['build_s']:.1f} s alone."))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
