"""Cluster rules: pure judgements over documents (the profile's nodes, this machine's interfaces, a
connection attempt, every node's GPUs), each a Finding whose fix is the concrete `--set` or action.

The cluster step applies them where each fact is measured: a node's link before its Ray starts,
the head's Ray port on a worker before it joins, the GPUs of every node on the head once their
fingerprints are in. (TP x nodes' GPUs is a profile rule: profiles/model.py refuses a mismatch.)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from dsv4setup.core.finding import Finding, failed, passed
from dsv4setup.profiles.model import MultiNode, NodeSpec
from dsv4setup.serve.readiness import is_loopback


def link(multi: MultiNode, node: NodeSpec, addresses: dict[str, list[str]]) -> Finding:
    """The node's address is set, not loopback, one of this machine's, on the node's interface.

    `addresses`: this machine's addresses by interface (`ip -br addr`)."""
    id_, index = "cluster.link", multi.nodes.index(node)
    address, interface = node.address, multi.interface(node)
    if not address:
        return failed(id_, f"node {node.name} has no address on the inter-node link",
                      f"set it: --set multinode.nodes.{index}.address=IP (`ip -br addr` shows them)")
    if is_loopback(address):
        return failed(id_, f"node {node.name}'s address {address} is a loopback address: the other nodes cannot "
                           "reach it", f"--set multinode.nodes.{index}.address=IP with its address on the "
                                       "inter-node link (`ip -br addr`)")
    carrier = next((name for name, found in addresses.items() if address in found), None)
    if carrier is None:
        mine = ", ".join(a for found in addresses.values() for a in found)
        return failed(id_, f"{address} (node {node.name}) is not an address of this machine",
                      f"run this on {node.name}, or correct it: --set multinode.nodes.{index}.address=IP "
                      f"(this machine has: {mine})")
    if not interface:
        return failed(id_, f"node {node.name}: no inter-node interface is set (Gloo and NCCL would pick one)",
                      f"--set multinode.nodes.{index}.interface={carrier}")
    if interface not in addresses:
        return failed(id_, f"node {node.name}: this machine has no interface {interface!r} ({address} is on {carrier})",
                      f"--set multinode.nodes.{index}.interface={carrier}")
    if interface != carrier:
        return failed(id_, f"node {node.name}: interface {interface!r} does not carry {address} (it is on {carrier})",
                      f"--set multinode.nodes.{index}.interface={carrier}")
    return passed(id_, f"node {node.name}: {address} on {interface}")


def head_port(multi: MultiNode, error: str | None) -> Finding:
    """A worker reaches the head's Ray port (`error`: why a TCP connection to it failed, None: it connected)."""
    where = f"{multi.head.address}:{multi.ray_port}"
    if error is None:
        return passed("cluster.head_port", f"the head's Ray port {where} answers")
    return failed("cluster.head_port", f"the head's Ray port {where} cannot be reached: {error}",
                  f"start the head first (`dsv4setup up --node {multi.head.name}` there); check the link and "
                  f"any firewall between the nodes for TCP port {multi.ray_port}; or correct the head's address: "
                  f"--set multinode.nodes.{multi.nodes.index(multi.head)}.address=IP")


def gpu_kind(gpus: list[dict[str, Any]]) -> str:
    """`N x NAME (M GiB)` of a node's GPUs (NVML's name and memory; unified-memory GPUs report none)."""
    labels = Counter((g.get("name") or "unknown GPU") + (f" ({g['memory_total_bytes'] / 2**30:.0f} GiB)"
                                                         if g.get("memory_total_bytes") else "") for g in gpus)
    return " + ".join(f"{count} x {label}" for label, count in sorted(labels.items())) or "no GPU"


def same_gpus(multi: MultiNode, gpus: dict[str, list[dict[str, Any]]]) -> Finding:
    """Every node has the head's GPU family and memory (`gpus`: each node's NVML GPUs, by node name)."""
    head = gpu_kind(gpus.get(multi.head.name, []))
    others = {n.name: gpu_kind(gpus.get(n.name, [])) for n in multi.nodes if n is not multi.head}
    differ = {name: kind for name, kind in others.items() if kind != head}
    if differ:
        return failed("cluster.gpus", "; ".join(f"node {name} has {kind} (head {multi.head.name}: {head})"
                                                for name, kind in differ.items()),
                      "one TP group needs the same GPU model and memory on every node: serve with the nodes "
                      "that match (remove the others from multinode.nodes and lower serve.tensor_parallel_size)")
    return passed("cluster.gpus", f"every node: {head}")
