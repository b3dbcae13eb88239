"""Run by the serving venv's Python (where Ray is), never imported by dsv4setup: it has no dsv4setup.

    python ray_probe.py ADDRESS NODE_ADDRESS... [--fingerprints | --once]

Connects to the Ray cluster at ADDRESS and prints one JSON line per second,
`{"alive": {address: resources}}`, until every NODE_ADDRESS is alive (with --once: one line, then
it exits, whoever is alive). With --fingerprints it then
runs a task pinned to each of those nodes that reads the node's fingerprint file (the path in
DSV4SETUP_NODE_FINGERPRINT, set on that node's Ray) and re-measures the installed vLLM version
and Ray versions and the sha256 of the patched files there; it prints `{"fingerprints": {address: doc}}`.
The caller enforces the timeout (it kills this process).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import time
from importlib import metadata, util
from pathlib import Path
from typing import Any

FINGERPRINT_ENV = "DSV4SETUP_NODE_FINGERPRINT"


def measure() -> dict[str, Any]:
    """On the node itself: its fingerprint file, with the vLLM version and patched-file hashes measured."""
    path = os.environ.get(FINGERPRINT_ENV)
    if not path:
        return {"error": f"{FINGERPRINT_ENV} is not set on this node's Ray (not started by dsv4setup)"}
    try:
        doc: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"error": f"cannot read {path}: {exc}"}
    package = (doc.get("vllm") or {}).get("package") or "vllm"
    try:
        doc["vllm"] = {"package": package, "version": metadata.version(package)}
    except metadata.PackageNotFoundError:
        doc["vllm"] = {"package": package, "version": None}
    try:
        doc["ray"] = metadata.version("ray")  # the Ray this very task runs on
    except metadata.PackageNotFoundError:
        doc["ray"] = None
    spec = util.find_spec("vllm")
    root = Path(spec.origin).parent.parent if spec and spec.origin else None
    doc["patched_hashes"] = {
        rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() if root and (root / rel).is_file() else None
        for rel in doc.get("patched_files", [])}
    doc["hostname"] = os.uname().nodename
    return doc


def main(argv: list[str]) -> int:
    ray: Any = importlib.import_module("ray")
    strategies: Any = importlib.import_module("ray.util.scheduling_strategies")
    fingerprints, once = "--fingerprints" in argv, "--once" in argv
    address, *expected = [a for a in argv if a not in ("--fingerprints", "--once")]
    ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    while True:
        alive = {n["NodeManagerAddress"]: n for n in ray.nodes() if n.get("Alive")}
        print(json.dumps({"alive": {a: n.get("Resources", {}) for a, n in alive.items()}}), flush=True)
        if once or all(a in alive for a in expected):
            break
        time.sleep(1.0)
    if fingerprints:
        task = ray.remote(num_cpus=0)(measure)
        refs = {a: task.options(scheduling_strategy=strategies.NodeAffinitySchedulingStrategy(
            alive[a]["NodeID"], soft=False)).remote() for a in expected}
        print(json.dumps({"fingerprints": {a: ray.get(ref) for a, ref in refs.items()}}), flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
