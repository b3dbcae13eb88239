"""Every node's state for `dsv4setup status`: the cluster step's last check, plus a bounded live look.

The cluster step records each check it makes in `run/cluster-check.json` (`record_check`), whatever
its outcome: the nodes it expected, which were alive in Ray, and on the head each node's
fingerprint and how it differs from the head's. `cluster_status` reads that record (or, for a
state written before it existed, the step's outputs) and, when this node's Ray runs, asks the Ray
cluster once which nodes are alive now, killed after LIVE_TIMEOUT_S: status never hangs on Ray.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv4setup.cluster.fingerprint import differences
from dsv4setup.cluster.nodes import describe
from dsv4setup.cluster.raynode import alive_now, ray_alive, ray_record
from dsv4setup.cluster.raytoken import ray_auth_env
from dsv4setup.core.fsutil import atomic_write_json
from dsv4setup.core.state import State, now_iso
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.model import MultiNode, NodeSpec

CHECK_FILE = "cluster-check.json"
LIVE_TIMEOUT_S = 10.0
OK = "ok"


@dataclass
class ClusterCheck:
    """What one run of the cluster step saw, filled in as it goes (the record is written from it)."""

    multi: MultiNode
    node: NodeSpec
    alive: dict[str, dict[str, float]] = field(default_factory=dict)  # node address -> Ray resources
    fingerprints: dict[str, dict[str, Any]] | None = None  # node address -> fingerprint (the head only)


def check_file(workdir: Workdir) -> Path:
    return workdir.run_dir / CHECK_FILE


def fingerprint_summary(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """What status shows of a node's fingerprint (the checkpoint as a file count, not every hash)."""
    if doc is None or "error" in doc:
        return None
    vllm = doc.get("vllm") or {}
    return {"vllm": f"{vllm.get('package')}=={vllm.get('version')}", "patches": doc.get("patches", []),
            "toolkit": doc.get("toolkit"), "checkpoint_files": len(doc.get("checkpoint") or {}),
            "hostname": doc.get("hostname")}


def _agreement(check: ClusterCheck, address: str) -> tuple[bool | None, list[str]]:
    """Whether the node's fingerprint matches the head's, and how not (None: not compared)."""
    docs = check.fingerprints
    if docs is None or address not in docs:
        return None, []
    doc = docs[address]
    if "error" in doc:
        return False, [str(doc["error"])]
    found = differences(docs.get(str(check.multi.head.address), {}), doc)
    return not found, found


def record_check(workdir: Workdir, check: ClusterCheck, outcome: str, message: str | None) -> None:
    """Write the check's record: `outcome` is `ok` or the step error's known-failure id."""
    nodes = []
    for spec in check.multi.nodes:
        address = str(spec.address)
        agrees, diff = _agreement(check, address)
        seen = check.node.role == "head" or spec is check.node  # a worker waits for itself only
        nodes.append({**{k: v for k, v in describe(check.multi, spec).items() if k != "index"},
                      "alive": address in check.alive if seen else None,
                      "fingerprint": fingerprint_summary((check.fingerprints or {}).get(address)),
                      "agrees": agrees, "differences": diff})
    atomic_write_json(check_file(workdir), {
        "checked_at": now_iso(), "node": check.node.name, "role": check.node.role,
        "ray_address": f"{check.multi.head.address}:{check.multi.ray_port}", "outcome": outcome, "message": message,
        "nodes": nodes})


def _read_check(workdir: Workdir) -> dict[str, Any] | None:
    try:
        doc = json.loads(check_file(workdir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("nodes"), list) else None


def _from_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """A check record from the step's outputs (a state written before the record existed): the check passed."""
    me = outputs.get("node") or {}
    nodes = [{"name": name, "role": me.get("role") if name == me.get("name") else None,
              "address": seen.get("address"), "interface": me.get("interface") if name == me.get("name") else None,
              "gpus": me.get("gpus") if name == me.get("name") else None, "alive": True,
              "fingerprint": None, "agrees": None, "differences": []}
             for name, seen in (outputs.get("nodes") or {}).items() if isinstance(seen, dict)]
    return {"checked_at": None, "node": me.get("name"), "role": me.get("role"),
            "ray_address": outputs.get("ray_address"), "outcome": OK, "message": None, "nodes": nodes}


def cluster_status(workdir: Workdir, state: State, live: bool) -> dict[str, Any] | None:
    """This node and every node it knows of (null: the cluster step never ran in this workdir).

    `live`: ask the Ray cluster which nodes are alive now (bounded by LIVE_TIMEOUT_S); each node's
    `alive` is null when not asked or no answer came."""
    record = state.steps.get("cluster")
    check = _read_check(workdir)
    if check is None and record is not None and record.outputs.get("node"):
        check = _from_outputs(record.outputs)
    if check is None:
        return None
    ray = ray_record(workdir)
    running = ray is not None and ray_alive(ray)
    env = {**os.environ, **ray_auth_env(workdir)}
    answer = (alive_now(workdir.venv_python, str(check["ray_address"]), env, LIVE_TIMEOUT_S)
              if live and running and check.get("ray_address") else None)
    nodes = [{**{k: n.get(k) for k in ("name", "role", "address", "interface", "gpus")},
              "alive": None if answer is None else str(n.get("address")) in answer,
              "alive_at_check": n.get("alive"), "fingerprint": n.get("fingerprint"), "agrees": n.get("agrees"),
              "differences": n.get("differences") or []} for n in check["nodes"] if isinstance(n, dict)]
    mine = next((n for n in nodes if n["name"] == check.get("node")), None)
    joined = running and check.get("outcome") == OK and (answer is None or (mine is not None and mine["alive"]))
    return {"node": check.get("node"), "role": check.get("role"), "ray_address": check.get("ray_address"),
            "ray": {"pid": ray.pid if ray else None, "running": running},
            "live": "not-asked" if not (live and running) else "answered" if answer is not None else "no-answer",
            "joined": bool(joined), "checked_at": check.get("checked_at"), "outcome": check.get("outcome"),
            "message": check.get("message"), "nodes": nodes}
