"""Each benchmark's last result, as a file: `benchmarks/results/<name>.json`.

A benchmark calls `start(name)` before it measures and `Run.finish(...)` at the end; that writes
the figures, the ratios with their targets, the machine (architecture, cores, memory, GPUs, the
load average at start and end), the date and the git commit, then re-renders the table in
docs/performance.md (benchmarks/render.py). The page's figures are only ever written here, by
the benchmark that measured them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
SCHEMA = "dsv4setup.benchmark-result/1"


@dataclass(frozen=True)
class Figure:
    """One measured value, e.g. Figure("up", 1.74, "s wall"); `samples`: the single runs behind a median."""

    label: str
    value: float
    unit: str = ""
    samples: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Ratio:
    """A ratio of two figures, with its target (`met` None: no target)."""

    label: str
    value: float
    unit: str = "x"
    target: str = ""
    met: bool | None = None


def git_commit() -> str:
    """HEAD's short hash, `+dirty` when tracked files differ from it ("unknown" outside a git checkout)."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def gpu_count() -> int:
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def machine(load_start: float, load_end: float) -> str:
    mem = memory_gib()
    gpus = gpu_count()
    parts = [platform.machine(), f"{os.cpu_count()} cores", f"{mem:.0f} GiB" if mem else "memory unknown",
             f"{gpus} NVIDIA GPU(s)" if gpus else "no GPU",
             f"load average {min(load_start, load_end):.1f}-{max(load_start, load_end):.1f} (start, end)"]
    return ", ".join(parts)


@dataclass
class Run:
    """One benchmark run: started before the measurement, finished with its figures."""

    name: str
    command: str
    load_start: float

    def finish(self, compares: str, figures: list[Figure], ratios: list[Ratio], note: str = "",
               results_dir: Path = RESULTS_DIR) -> Path:
        """Write the result file and re-render docs/performance.md; the path written."""
        from benchmarks.render import render_file  # render imports this module

        document = result_document(self.name, self.command, compares, figures, ratios,
                                   machine(self.load_start, os.getloadavg()[0]), note)
        path = write_result(document, results_dir)
        print(f"\nwrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
        if results_dir == RESULTS_DIR and render_file():
            print("re-rendered docs/performance.md")
        return path


def start(name: str) -> Run:
    """Call before measuring: keeps the command line and the load average at the start."""
    argv = [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]
    if Path(argv[0]).is_absolute() and Path(argv[0]).is_relative_to(REPO_ROOT):
        argv[0] = Path(argv[0]).relative_to(REPO_ROOT).as_posix()
    return Run(name, " ".join(["python", *argv]), os.getloadavg()[0])


def result_document(name: str, command: str, compares: str, figures: list[Figure], ratios: list[Ratio],
                    machine_note: str, note: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "benchmark": name,
        "command": command,
        "compares": compares,
        "figures": [asdict(f) for f in figures],
        "ratios": [asdict(r) for r in ratios],
        "machine": machine_note,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "note": note,
    }


def write_result(document: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Atomically replace results/<benchmark>.json."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{document['benchmark']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


REQUIRED = {"schema": str, "benchmark": str, "command": str, "compares": str, "figures": list, "ratios": list,
            "machine": str, "date": str, "commit": str, "note": str}


def load_results(results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every result file, checked for its fields, sorted by benchmark name."""
    documents = []
    for path in sorted(results_dir.glob("*.json")):
        document = json.loads(path.read_text())
        problems = [key for key, kind in REQUIRED.items() if not isinstance(document.get(key), kind)]
        if document.get("schema") != SCHEMA or document.get("benchmark") != path.stem:
            problems += ["schema", "benchmark"]
        if problems:
            raise ValueError(f"{path}: not a {SCHEMA} document for {path.stem!r}: check {', '.join(problems)}")
        documents.append(document)
    return documents
