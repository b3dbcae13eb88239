"""A node's deployment fingerprint: what must be identical on every node of a cluster.

Each node's `cluster` step writes its own (`run/node-fingerprint.json`) from what its earlier
steps verified; the head then reads every node's file through a Ray task on that node, which
also re-measures what it can there: the installed vLLM and Ray versions and the sha256 of every file
the applied patches touch. The head refuses to serve when any node differs from its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsv4setup.download.verify import read_manifest, sha256_file
from dsv4setup.engine import RunContext
from dsv4setup.patches.manifest import load_manifest
from dsv4setup.patches.outputs import PatchesOutputs
from dsv4setup.preflight.outputs import PreflightOutputs
from dsv4setup.profiles.paths import checkpoint_dir
from dsv4setup.toolkit.outputs import ToolkitOutputs
from dsv4setup.vllm.outputs import VllmOutputs
from dsv4setup.vllm.probe import dist_infos, site_packages

FINGERPRINT_FILE = "node-fingerprint.json"
FINGERPRINT_ENV = "DSV4SETUP_NODE_FINGERPRINT"  # set on the node's Ray processes: where its file is
HASHED_FILE_LIMIT = 64 * 1024 * 1024  # bigger local files without a download manifest: size only


def fingerprint_file(ctx: RunContext) -> Path:
    return ctx.workdir.run_dir / FINGERPRINT_FILE


def checkpoint_hashes(ctx: RunContext) -> dict[str, str]:
    """Every checkpoint file's content id: the hub's sha256/blob id verified by the download, else hashed here."""
    path = checkpoint_dir(ctx.profile, ctx.workdir)
    manifest = read_manifest(path)
    if manifest is not None and manifest.complete:
        return {name: f.sha256 or f.blob_id or f"size:{f.size}" for name, f in sorted(manifest.expected.items())}
    files = sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts)
    return {str(p.relative_to(path)): sha256_file(p) if p.stat().st_size <= HASHED_FILE_LIMIT
            else f"size:{p.stat().st_size}" for p in files}


def patched_files(applied: list[str]) -> list[str]:
    """The vLLM files (relative to site-packages) the applied patches touch."""
    manifest = load_manifest()
    return sorted({f for pid in applied for f in manifest.get(pid).spec.files})


def local_fingerprint(ctx: RunContext) -> dict[str, Any]:
    vllm, patches, toolkit = ctx.outputs(VllmOutputs), ctx.outputs(PatchesOutputs), ctx.outputs(ToolkitOutputs)
    applied = sorted(patches.applied) if patches else []
    return {"vllm": {"package": vllm.package if vllm else ctx.profile.vllm.package,
                     "version": vllm.version if vllm else None}, "ray": ray_version(ctx.workdir.venv_dir),
            "patches": applied, "patched_files": patched_files(applied),
            "toolkit": toolkit.version if toolkit else None, "checkpoint": checkpoint_hashes(ctx),
            "gpus": gpus(ctx)}


def ray_version(venv: Path) -> str | None:
    """The Ray installed in the serving venv (from its dist-info; None: none)."""
    site = site_packages(venv)
    return dist_infos(site).get("ray", (None, None))[0] if site is not None else None


def gpus(ctx: RunContext) -> list[dict[str, Any]]:
    """This node's GPUs as preflight measured them (NVML name and memory; the head compares them)."""
    preflight = ctx.outputs(PreflightOutputs)
    try:
        snapshot = json.loads(Path(preflight.snapshot).read_text(encoding="utf-8")) if preflight else {}
    except (OSError, ValueError):
        return []
    return [{"name": g.get("name"), "memory_total_bytes": g.get("memory_total_bytes")}
            for g in snapshot.get("gpus") or [] if isinstance(g, dict)]


def differences(head: dict[str, Any], node: dict[str, Any]) -> list[str]:
    """What differs between the head's fingerprint and a node's, in words (empty: identical)."""
    found = []
    if head.get("vllm") != node.get("vllm"):
        found.append(f"vLLM {_vllm(node)} (head: {_vllm(head)})")
    if head.get("ray") != node.get("ray"):
        found.append(f"Ray {node.get('ray')} (head: {head.get('ray')})")
    head_patches, node_patches = set(head.get("patches", [])), set(node.get("patches", []))
    if missing := sorted(head_patches - node_patches):
        found.append(f"patch {', '.join(missing)} not applied (the head has it)")
    if extra := sorted(node_patches - head_patches):
        found.append(f"patch {', '.join(extra)} applied (the head does not have it)")
    if not missing and not extra and head.get("patched_hashes") != node.get("patched_hashes"):
        changed = sorted(k for k in set(head.get("patched_hashes", {})) | set(node.get("patched_hashes", {}))
                         if head.get("patched_hashes", {}).get(k) != node.get("patched_hashes", {}).get(k))
        found.append(f"patched files differ: {', '.join(changed)}")
    if head.get("toolkit") != node.get("toolkit"):
        found.append(f"CUDA toolkit {node.get('toolkit')} (head: {head.get('toolkit')})")
    head_ckpt, node_ckpt = head.get("checkpoint", {}), node.get("checkpoint", {})
    if head_ckpt != node_ckpt:
        names = sorted(k for k in set(head_ckpt) | set(node_ckpt) if head_ckpt.get(k) != node_ckpt.get(k))
        found.append(f"checkpoint files differ: {', '.join(names[:5])}" + (" ..." if len(names) > 5 else ""))
    return found


def version_commands(head_name: str, node_name: str, head: dict[str, Any], node: dict[str, Any]) -> list[str]:
    """When a node's vLLM differs from the head's (an upgrade half done): the command each side still needs, in
    words. Workers switch first, the head last; so either the node catches up with the head, or the head with
    the node (or the node goes back). Pure; empty when the versions agree."""
    have, want = (node.get("vllm") or {}).get("version"), (head.get("vllm") or {}).get("version")
    if have == want or not have or not want:
        return []
    return [f"on node {node_name}: `dsv4setup upgrade --vllm {want} --node {node_name}` (to the head's {want})",
            f"or on the head {head_name}: `dsv4setup upgrade --vllm {have} --node {head_name}` (to {node_name}'s "
            f"{have}; `dsv4setup rollback --node {node_name}` there undoes {node_name}'s instead)"]


def _vllm(doc: dict[str, Any]) -> str:
    vllm = doc.get("vllm") or {}
    return f"{vllm.get('package')}=={vllm.get('version')}"
