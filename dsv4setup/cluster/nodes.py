"""Which node of a multi-node profile this machine is: `--node NAME`, the recorded one, or found by address."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import psutil

from dsv4setup.cluster.outputs import ClusterOutputs
from dsv4setup.cluster.raytoken import ray_auth_env
from dsv4setup.core.errors import UsageError
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import RunContext
from dsv4setup.profiles.model import MultiNode, NodeSpec, Profile

NODE_OPTION = "node"
# The one Ray every node runs (installed by the vllm step for a multi-node profile, part of each node's
# fingerprint). Ray's token authentication exists since 2.52; from 2.61 Ray turns it on by itself for every
# cluster, so what an unpinned install brings would change how the nodes authenticate under us.
RAY_VERSION = "2.60.0"


def local_addresses() -> dict[str, list[str]]:
    """This machine's IPv4/IPv6 addresses by interface (in its network namespace)."""
    return {name: [a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
            for name, addrs in psutil.net_if_addrs().items()}


def local_networks() -> dict[str, list[str]]:
    """This machine's addresses with their prefix length by interface (`10.200.0.2/24`)."""
    found: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6) or not a.netmask:
                continue
            try:
                mask = int(ipaddress.ip_address(a.netmask.split("/")[0]))
                found.setdefault(name, []).append(f"{a.address.split('%')[0]}/{bin(mask).count('1')}")
            except ValueError:
                continue
    return found


def default_route_interfaces(proc: Path = Path("/proc/net")) -> list[str]:
    """The interfaces that carry a default route (IPv4 or IPv6), read from the kernel's tables."""
    found = set()
    try:
        for line in (proc / "route").read_text().splitlines()[1:]:
            cols = line.split()
            if len(cols) > 7 and cols[1] == "00000000" and cols[7] == "00000000":
                found.add(cols[0])
    except OSError:
        pass
    try:
        for line in (proc / "ipv6_route").read_text().splitlines():
            cols = line.split()
            if len(cols) == 10 and cols[1] == "00" and set(cols[0]) == {"0"} and cols[9] != "lo":
                found.add(cols[9])
    except OSError:
        pass
    return sorted(found)


def node_index(multi: MultiNode, node: NodeSpec) -> int:
    return multi.nodes.index(node)


def find_node(profile: Profile, requested: str | None, recorded: str | None = None) -> NodeSpec:
    """This machine's node: by name (`--node`, else the one recorded by an earlier `up`), else by address."""
    multi = profile.multinode
    if multi is None:
        raise UsageError(f"profile {profile.name} has no multinode section: --node needs a multi-node profile")
    names = ", ".join(n.name for n in multi.nodes)
    name = requested or recorded
    if name is not None:
        for node in multi.nodes:
            if node.name == name:
                return node
        raise UsageError(f"--node {name}: profile {profile.name} has no such node",
                         fix=f"its nodes are: {names}")
    mine = {a for addrs in local_addresses().values() for a in addrs}
    found = [n for n in multi.nodes if n.address and n.address in mine]
    if len(found) == 1:
        return found[0]
    raise UsageError(f"which node of {profile.name} is this machine? none of the nodes' addresses is one of "
                     f"this machine's", fix=f"say it: `dsv4setup up --node NAME` (nodes: {names}), or set the "
                     "node's address (--set multinode.nodes.N.address=IP)")


# vLLM's ranks run as Ray workers, which Ray starts at niceness 15: any other load on the node then
# starves them (measured: the first request stuck for minutes in vLLM's "No available shared memory
# broadcast block" while the ranks compiled their CPU kernels behind other processes).
RAY_WORKER_ENV = {"RAY_worker_niceness": "0"}
# Ray's driver (the server) folds log lines that differ only in numbers, such as vLLM's "TP rank 0"
# and "TP rank 1", into one "[repeated 2x across cluster]": serve.log would not say which rank on
# which node said what, and which of them is printed depends on which came first. Keep every line.
RAY_LOG_ENV = {"RAY_DEDUP_LOGS": "0"}


def node_env(multi: MultiNode, node: NodeSpec, workdir: Workdir) -> dict[str, str]:
    """The environment of a node's processes: Gloo and NCCL on the inter-node link, Ray's workers at
    normal priority, every rank's log lines kept, Ray's token by path (cluster/raytoken.py)."""
    interface = multi.interface(node)
    link = {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface} if interface else {}
    return {**link, **RAY_WORKER_ENV, **RAY_LOG_ENV, **ray_auth_env(workdir)}


def describe(multi: MultiNode, node: NodeSpec) -> dict[str, Any]:
    return {"name": node.name, "role": node.role, "address": node.address, "interface": multi.interface(node),
            "gpus": node.gpus, "index": node_index(multi, node)}


def ray_start_args(multi: MultiNode, node: NodeSpec, address: str, head_address: str) -> list[str]:
    """`ray start` arguments for a node (the plan shows them; the cluster step runs them)."""
    start = (["--head", "--port", str(multi.ray_port)] if node.role == "head"
             else ["--address", f"{head_address}:{multi.ray_port}"])
    return [*start, "--node-ip-address", address, "--num-gpus", str(node.gpus)]


def on_worker(ctx: RunContext) -> str | None:
    """Why a head-only step (serve, smoke, bench) has nothing to do here: this node is a cluster worker."""
    cluster = ctx.outputs(ClusterOutputs)
    if ctx.profile.multinode is None or cluster is None or cluster.node.role != "worker":
        return None
    return f"node {cluster.node.name} is a worker of the cluster: the head ({ctx.profile.multinode.head.name}) serves"
