"""cluster: the Ray cluster of a multi-node profile (`dsv4setup up --node NAME` on every node).

A worker starts its Ray joined to the head's and checks that the cluster sees it alive with its
GPUs. The head starts Ray, waits until every listed node is alive (timeout, stall and a dead Ray
are errors naming the missing nodes), then runs a task on every node that reads that node's
deployment fingerprint (vLLM, applied patches, patched-file hashes, checkpoint hashes, toolkit)
and refuses to go on when any node differs from the head, naming the node and the difference.

On the head the postcondition also asks Ray which nodes are alive: vLLM's ranks run on every node,
so a worker gone while serving (its Ray stopped, its machine down) took the server with it; the
step then runs again and waits for that node, naming it when it does not come back.

Each run records what it saw, whatever the outcome (cluster/view.py): `status` shows every node from it.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from dsv4setup.cluster.fingerprint import (
    FINGERPRINT_ENV,
    differences,
    fingerprint_file,
    local_fingerprint,
    version_commands,
)
from dsv4setup.cluster.nodes import (
    NODE_OPTION,
    RAY_VERSION,
    describe,
    find_node,
    local_addresses,
    node_env,
    node_index,
    ray_start_args,
)
from dsv4setup.cluster.outputs import ClusterOutputs
from dsv4setup.cluster.raynode import RAY_MODULE, alive_now, probe, ray_alive, ray_record
from dsv4setup.cluster.raytoken import ensure_head_token, token_file, token_fix, token_problem, token_rejected
from dsv4setup.cluster.rules import head_port, link, same_gpus
from dsv4setup.cluster.view import OK, ClusterCheck, record_check
from dsv4setup.core.errors import StepError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.core.fsutil import atomic_write_json
from dsv4setup.engine import RunContext, Step
from dsv4setup.profiles.model import MultiNode, NodeSpec
from dsv4setup.serve.command import render_serve
from dsv4setup.serve.process import RAY_RECORD, ServerRecord, new_tmpdir, start_server, stop_server, write_record

POLL_S = 1.0
HEARTBEAT_S = 10.0
HEAD_WAIT_S = 60.0  # a worker started with its head: how long a refused connection is retried
STALL_S = 120.0  # the probe reports every second; this long without a word: the cluster is hung


def this_node(ctx: RunContext) -> tuple[MultiNode, NodeSpec]:
    multi = ctx.profile.multinode
    assert multi is not None  # not_applicable otherwise
    cluster = ctx.outputs(ClusterOutputs)
    recorded = cluster.node.name if cluster else None
    return multi, find_node(ctx.profile, ctx.options.get(NODE_OPTION), recorded)


def _address(multi: MultiNode, node: NodeSpec) -> str:
    if not node.address:
        index = node_index(multi, node)
        raise StepError(f"node {node.name} has no address on the inter-node link",
                        fix=f"set it: --set multinode.nodes.{index}.address=IP (`ip -br addr` shows them)")
    return node.address


def connect_error(host: str, port: int, wait_s: float) -> str | None:
    """Why a TCP connection to host:port fails (None: it connects); a refusal is retried for wait_s
    (the head may be starting its Ray right now)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=5):
                return None
        except OSError as exc:
            if not isinstance(exc, ConnectionRefusedError) or time.monotonic() >= deadline:
                return exc.strerror or str(exc)
        time.sleep(POLL_S)


def check_interface(multi: MultiNode, node: NodeSpec) -> None:
    """The node's interface exists on this machine and carries its address (else Gloo/NCCL pick another link)."""
    finding = link(multi, node, local_addresses())
    if not finding.ok:
        raise StepError(finding.summary, fix=finding.fix)


class ClusterStep(Step):
    name = "cluster"
    description = "multi-node: join (worker) or form (head) the Ray cluster; every node must match the head"
    needs = ("preflight", "toolkit", "vllm", "patches", "download", "checkpoint")  # everything before it
    Outputs = ClusterOutputs

    def not_applicable(self, ctx: RunContext) -> str | None:
        return None if ctx.profile.multinode is not None else "a single-node profile"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        multi, node = this_node(ctx)
        # how long the head waits changes nothing it makes: a rerun with another timeout re-checks, not redoes
        return {"node": describe(multi, node), "multinode": multi.model_dump(mode="json", exclude={"join_timeout_s"}),
                "fingerprint": local_fingerprint(ctx)}

    def is_done(self, ctx: RunContext) -> Finding:
        multi, node = this_node(ctx)
        record = ray_record(ctx.workdir)
        if record is None or not ray_alive(record):
            return postcondition(False, f"this node's Ray is not running (node {node.name})")
        if node.role == "head":  # the server's ranks run on every node: one gone, and the server is too
            cluster = f"{multi.head.address}:{multi.ray_port}"
            alive = alive_now(ctx.workdir.venv_python, cluster, {**os.environ, **self._env(ctx, multi, node)})
            gone = [f"{n.name} ({n.address})" for n in multi.nodes if alive is None or str(n.address) not in alive]
            if gone:
                return postcondition(False, f"no longer in the Ray cluster at {cluster}: {', '.join(gone)}"
                                     if alive is not None else f"the Ray cluster at {cluster} does not answer")
        return postcondition(True, f"node {node.name} ({node.role}): Ray pid {record.pid} runs, "
                                   f"joined to {multi.head.address}:{multi.ray_port}")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Join or form the cluster; what it saw is recorded for `status` whatever the outcome."""
        multi, node = this_node(ctx)
        check = ClusterCheck(multi, node)
        try:
            outputs = self._form(ctx, multi, node, check)
        except StepError as exc:
            record_check(ctx.workdir, check, exc.known_failure or "failed", exc.message)
            raise
        record_check(ctx.workdir, check, OK, None)
        return outputs

    def _form(self, ctx: RunContext, multi: MultiNode, node: NodeSpec, check: ClusterCheck) -> dict[str, Any]:
        address, head_address = _address(multi, node), _address(multi, multi.head)
        check_interface(multi, node)
        self._token(ctx, multi, node)
        if node.role == "worker":
            reach = head_port(multi, connect_error(head_address, multi.ray_port, HEAD_WAIT_S))
            if not reach.ok:
                raise StepError(reach.summary, fix=reach.fix, known_failure="cluster-head-unreachable")
        fingerprint = local_fingerprint(ctx)
        if fingerprint["ray"] != RAY_VERSION:
            raise StepError(f"node {node.name}'s serving venv has Ray {fingerprint['ray'] or 'not installed'}: every "
                            f"node runs ray=={RAY_VERSION}, the version dsv4setup pins",
                            fix=f"reinstall the serving venv: `dsv4setup up --node {node.name} --redo vllm`",
                            known_failure="cluster-ray-version")
        atomic_write_json(fingerprint_file(ctx), fingerprint)
        env = self._env(ctx, multi, node)
        log = ctx.require_log().path
        since = log.stat().st_size if log.exists() else 0  # what Ray writes from here on is this start's
        record = self._start(ctx, multi, node, env)
        try:
            seen = self._wait(ctx, multi, node, record, env, check, since)
        except (StepError, KeyboardInterrupt):
            report = stop_server(ctx.workdir, record, name=RAY_RECORD)
            ctx.require_log().line(f"stopped this node's Ray (pids {report.pids})")
            raise
        return {"node": describe(multi, node), "ray_pid": record.pid, "ray_address": f"{head_address}:{multi.ray_port}",
                "address": address, "nodes": seen, "fingerprint": fingerprint}

    @staticmethod
    def _token(ctx: RunContext, multi: MultiNode, node: NodeSpec) -> None:
        """The head makes the cluster's Ray token when it has none; a worker must have the head's copy."""
        path = token_file(ctx.workdir)
        if node.role == "head" and ensure_head_token(ctx.workdir):
            ctx.progress(f"made this cluster's Ray token: {path} (0600); every worker needs a copy of it")
        problem = token_problem(path)
        if problem is None:
            return
        if node.role == "head":
            raise StepError(f"this cluster's Ray token is not usable: {problem}",
                            fix=f"correct it, or remove it and run `dsv4setup up --node {node.name}` again to make a "
                                 "new one (then copy it to every worker again)", known_failure="cluster-token-unusable")
        raise StepError(f"node {node.name} has no usable copy of the head's Ray token: {problem}",
                        fix=token_fix(multi, ctx.workdir, node), known_failure="cluster-token-missing")

    @staticmethod
    def _env(ctx: RunContext, multi: MultiNode, node: NodeSpec) -> dict[str, str]:
        """The node's Ray runs with the server's environment (its workers load the model alike)."""
        serve_env = render_serve(ctx.profile, ctx.workdir, ctx.state).env
        return {**serve_env, **node_env(multi, node, ctx.workdir), "VLLM_HOST_IP": str(node.address),
                FINGERPRINT_ENV: str(fingerprint_file(ctx))}

    def _start(self, ctx: RunContext, multi: MultiNode, node: NodeSpec, env: dict[str, str]) -> ServerRecord:
        log = ctx.require_log()
        existing = ray_record(ctx.workdir)
        if existing is not None:  # ours from an earlier run: replaced (same args or not), never doubled
            report = stop_server(ctx.workdir, existing, name=RAY_RECORD)
            log.line(f"stopped this node's earlier Ray (pids {report.pids or 'none'})")
        tmpdir = new_tmpdir()
        argv = [str(ctx.workdir.venv_python), "-m", RAY_MODULE, "start", "--block",
                *ray_start_args(multi, node, str(node.address), str(multi.head.address)),
                "--temp-dir", os.path.join(tmpdir, "ray"), "--disable-usage-stats",
                *(["--include-dashboard=false"] if node.role == "head" else [])]
        log.line("$ " + " ".join(argv))
        ctx.progress(f"starting Ray on {node.name} ({node.role}, {node.address})")
        record, _proc = start_server(argv, env, host=str(node.address), port=multi.ray_port, log_path=log.path,
                                     cwd=ctx.workdir.root, tmpdir=tmpdir)
        write_record(ctx.workdir, record, RAY_RECORD)
        return record

    def _wait(self, ctx: RunContext, multi: MultiNode, node: NodeSpec, record: ServerRecord,
              env: dict[str, str], check: ClusterCheck, since: int) -> dict[str, Any]:
        """Until every expected node is alive (the head: all; a worker: itself); the head then compares."""
        head = node.role == "head"
        expected = [n for n in multi.nodes if head or n is node]
        names = {str(n.address): n for n in expected}
        started = last_word = last_beat = time.monotonic()
        full_env = {**os.environ, **env}
        alive: dict[str, dict[str, float]] = {}
        with probe(ctx.workdir.venv_python, f"{multi.head.address}:{multi.ray_port}", list(names), head,
                   full_env, ctx.require_log()) as next_line:
            while True:
                line = next_line(POLL_S)
                now = time.monotonic()
                if line is not None:
                    last_word = now
                    alive = check.alive = line.alive if line.alive is not None else alive
                    if line.fingerprints is not None:
                        check.fingerprints = line.fingerprints
                        return self._compare(multi, names, alive, line.fingerprints)
                missing = [n for a, n in names.items() if a not in alive]
                if not head and not missing:
                    return self._joined(node, alive)
                if not ray_alive(record):
                    if not head and token_rejected(ctx.require_log().path, since, wait_s=3.0):
                        raise StepError(f"the head at {multi.head.address}:{multi.ray_port} refused node {node.name}'s "
                                        "Ray token: it is not the head's", fix=token_fix(multi, ctx.workdir, node),
                                        known_failure="cluster-token-rejected")
                    raise StepError(f"Ray on {node.name} exited" + (
                        "" if head else f": it could not join the head at {multi.head.address}:{multi.ray_port}"),
                        fix=("start the head first (`dsv4setup up --node " + multi.head.name + "` there), check "
                              f"that this node reaches {multi.head.address}:{multi.ray_port}, then run this again"
                              if not head else f"read `dsv4setup logs cluster`; port {multi.ray_port} may be taken"),
                        known_failure="cluster-ray-exited")
                if now - started >= multi.join_timeout_s:
                    who = ", ".join(f"{n.name} ({n.address})" for n in missing) or "none"
                    raise StepError(f"nodes not in the cluster after {multi.join_timeout_s}s: {who}",
                                    fix=f"run `dsv4setup up --node NAME` on each of them ({who}); check they reach "
                                         f"{multi.head.address}:{multi.ray_port}; or wait longer: "
                                         "--set multinode.join_timeout_s=SECONDS",
                                    known_failure="cluster-node-missing")
                if now - last_word >= STALL_S:
                    raise StepError(f"no answer from the Ray cluster at {multi.head.address}:{multi.ray_port} for "
                                    f"{STALL_S:.0f}s", fix="read `dsv4setup logs cluster`",
                                    known_failure="cluster-stall")
                if now - last_beat >= HEARTBEAT_S:
                    last_beat = now
                    ctx.progress(f"waiting for {', '.join(n.name for n in missing) or 'the fingerprints'} "
                                 f"({now - started:.0f}s)")

    @staticmethod
    def _joined(node: NodeSpec, alive: dict[str, dict[str, float]]) -> dict[str, Any]:
        resources = alive[str(node.address)]
        if resources.get("GPU", 0) < node.gpus:
            raise StepError(f"node {node.name} joined with {resources.get('GPU', 0):g} GPUs, the profile lists "
                            f"{node.gpus}", fix="check CUDA_VISIBLE_DEVICES and the node's gpus in the profile")
        return {node.name: {"address": node.address, "resources": resources}}

    @staticmethod
    def _compare(multi: MultiNode, names: dict[str, NodeSpec], alive: dict[str, dict[str, float]],
                 docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        head_doc = docs[str(multi.head.address)]
        problems = [f"{names[a].name}: {doc['error']}" for a, doc in docs.items() if "error" in doc]
        problems += [f"node {names[a].name} ({a}) differs from the head {multi.head.name}: {'; '.join(diff)}"
                     + "".join(f"; {c}" for c in version_commands(multi.head.name, names[a].name, head_doc, doc))
                     for a, doc in docs.items() if "error" not in doc and (diff := differences(head_doc, doc))]
        gpus = same_gpus(multi, {names[a].name: doc.get("gpus", []) for a, doc in docs.items() if "error" not in doc})
        if problems or not gpus.ok:
            if not gpus.ok:
                problems.append(f"{gpus.summary} ({gpus.fix})")
            raise StepError("refusing to serve: " + " | ".join(problems),
                            fix="every node needs the same profile, overrides and patches: run the same "
                                 "`dsv4setup up --node NAME` (same --profile and --set) on that node, then here again",
                            known_failure="cluster-node-mismatch")
        return {n.name: {"address": a, "resources": alive.get(a, {}), "vllm": docs[a].get("vllm"),
                         "patches": docs[a].get("patches"), "hostname": docs[a].get("hostname")}
                for a, n in names.items()}


STEP = ClusterStep
