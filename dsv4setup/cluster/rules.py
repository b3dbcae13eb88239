"""Cluster rules: pure judgements over documents (the profile's nodes, this machine's interfaces, a
connection attempt, every node's GPUs), each a Finding whose fix is the concrete `--set` or action.

The cluster step applies them where each fact is measured: a node's link before its Ray starts,
the head's Ray port on a worker before it joins, the GPUs of every node on the head once their
fingerprints are in. `doctor` applies what one machine can know before any of that
(`doctor_findings`): every node's address, this machine's node's link, TP x PP against the nodes'
GPUs, this machine's GPUs against its node's. The ids live in doctor's `topology` area (the interconnect).
"""

from __future__ import annotations

import ipaddress
import shlex
from collections import Counter
from dataclasses import dataclass
from typing import Any

from dsv4setup.core.finding import Finding, failed, passed, skipped, warned
from dsv4setup.profiles.model import MultiNode, NodeSpec, Profile
from dsv4setup.serve.readiness import is_loopback
from dsv4setup.serve.signatures import profile_set_command

PP_FLAGS = ("--pipeline-parallel-size", "-pp")


def _address_problem(id_: str, multi: MultiNode, node: NodeSpec) -> Finding | None:
    """The node's address is unset or loopback (the other nodes could not reach it); None: usable."""
    index = multi.nodes.index(node)
    if not node.address:
        return failed(id_, f"node {node.name} has no address on the inter-node link",
                      f"set it: --set multinode.nodes.{index}.address=IP (`ip -br addr` shows them)")
    if is_loopback(node.address):
        return failed(id_, f"node {node.name}'s address {node.address} is a loopback address: the other nodes "
                           "cannot reach it", f"--set multinode.nodes.{index}.address=IP with its address on "
                                              "the inter-node link (`ip -br addr`)")
    return None


def link(multi: MultiNode, node: NodeSpec, addresses: dict[str, list[str]]) -> Finding:
    """The node's address is set, not loopback, one of this machine's, on the node's interface.

    `addresses`: this machine's addresses by interface (`ip -br addr`)."""
    id_, index = "topology.cluster_link", multi.nodes.index(node)
    address, interface = node.address, multi.interface(node)
    if (problem := _address_problem(id_, multi, node)) is not None:
        return problem
    carrier = next((name for name, found in addresses.items() if address in found), None)
    if carrier is None:
        mine = ", ".join(a for found in addresses.values() for a in found)
        return failed(id_, f"{address} (node {node.name}) is not an address of this machine",
                      f"run this on {node.name}, or correct it: --set multinode.nodes.{index}.address=IP "
                      f"(this machine has: {mine})")
    if not interface:
        return _set_interface(id_, f"node {node.name}: no inter-node interface is set (Gloo and NCCL would pick one)",
                              index, carrier)
    if interface not in addresses:
        return _set_interface(id_, f"node {node.name}: this machine has no interface {interface!r} "
                                   f"({address} is on {carrier})", index, carrier)
    if interface != carrier:
        return _set_interface(id_, f"node {node.name}: interface {interface!r} does not carry {address} "
                                   f"(it is on {carrier})", index, carrier)
    return passed(id_, f"node {node.name}: {address} on {interface}")


def head_port(multi: MultiNode, error: str | None) -> Finding:
    """A worker reaches the head's Ray port (`error`: why a TCP connection to it failed, None: it connected)."""
    where = f"{multi.head.address}:{multi.ray_port}"
    if error is None:
        return passed("topology.cluster_head_port", f"the head's Ray port {where} answers")
    return failed("topology.cluster_head_port", f"the head's Ray port {where} cannot be reached: {error}",
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
        return failed("topology.cluster_gpus", "; ".join(f"node {name} has {kind} (head {multi.head.name}: {head})"
                                                for name, kind in differ.items()),
                      "one TP group needs the same GPU model and memory on every node: serve with the nodes "
                      "that match (remove the others from multinode.nodes and lower serve.tensor_parallel_size)")
    return passed("topology.cluster_gpus", f"every node: {head}")


def node_addresses(multi: MultiNode) -> Finding:
    """Every node has an address on the inter-node link, none of them loopback (judged from the profile)."""
    id_ = "topology.cluster_addresses"
    problems = [p for n in multi.nodes if (p := _address_problem(id_, multi, n)) is not None]
    if problems:
        return failed(id_, "; ".join(p.summary for p in problems), problems[0].fix or "")
    return passed(id_, "nodes: " + ", ".join(f"{n.name} ({n.role}) {n.address}" for n in multi.nodes))


def _this_node(multi: MultiNode, addresses: dict[str, list[str]]) -> NodeSpec | None:
    mine = {a for found in addresses.values() for a in found}
    return next((n for n in multi.nodes if n.address and n.address in mine), None)


def this_link(multi: MultiNode, addresses: dict[str, list[str]] | None) -> Finding:
    """The link of the node this machine is (found by its addresses); `addresses` None: not measured
    (a saved snapshot carries no interfaces)."""
    id_ = "topology.cluster_link"
    if addresses is None:
        return skipped(id_, "a saved snapshot carries no network interfaces: run `dsv4setup doctor` on each node")
    node = _this_node(multi, addresses)
    if node is None:
        listed = ", ".join(f"{n.name} {n.address}" for n in multi.nodes)
        return warned(id_, f"this machine carries none of the nodes' addresses ({listed})",
                      "run doctor on the nodes themselves, or set this node's address on the inter-node link: "
                      "--set multinode.nodes.N.address=IP (`ip -br addr` shows them)")
    return link(multi, node, addresses)


def node_gpus(profile: Profile, addresses: dict[str, list[str]] | None, visible: int) -> Finding:
    """This machine's node lists as many GPUs as the machine shows (`visible`: the snapshot's, after
    CUDA_VISIBLE_DEVICES); its Ray offers that many to the ranks."""
    id_, multi = "topology.cluster_node_gpus", profile.multinode
    assert multi is not None
    if profile.match.cpu_only:
        return skipped(id_, "CPU nodes: each node's Ray offers its listed gpus to the ranks (--num-gpus)")
    node = _this_node(multi, addresses) if addresses is not None else None
    if node is None:
        return skipped(id_, "not known which node this machine is (see topology.cluster_link)")
    if visible != node.gpus:
        return failed(id_, f"node {node.name} lists {node.gpus} GPUs, this machine shows {visible}",
                      f"make them visible (CUDA_VISIBLE_DEVICES), or --set multinode.nodes.{multi.nodes.index(node)}"
                      f".gpus={visible} with serve.tensor_parallel_size set to the nodes' new total")
    return passed(id_, f"node {node.name}: {visible} GPUs, as listed")


def pipeline_size(extra_args: list[str]) -> int:
    """The pipeline-parallel size in serve.extra_args (`--pipeline-parallel-size N`, `-pp=N`); 1 without."""
    for i, arg in enumerate(extra_args):
        flag, eq, value = arg.partition("=")
        if flag in PP_FLAGS:
            value = value if eq else (extra_args[i + 1] if i + 1 < len(extra_args) else "")
            return int(value) if value.isdigit() else 1
    return 1


def parallel(profile: Profile) -> Finding:
    """TP x PP equals the GPUs the nodes hold: vLLM's Ray route places one rank on every GPU."""
    id_ = "topology.cluster_parallel"
    multi = profile.multinode
    assert multi is not None
    tp, pp = profile.serve.tensor_parallel_size, pipeline_size(profile.serve.extra_args)
    total = sum(n.gpus for n in multi.nodes)
    what = f"TP {tp} x PP {pp} = {tp * pp} ranks; the nodes hold {total} GPUs"
    if tp * pp != total:
        return failed(id_, what, f"make them equal: --set serve.tensor_parallel_size={total // pp or 1}, or drop "
                                 "--pipeline-parallel-size from serve.extra_args, or correct each node's gpus "
                                 "(--set multinode.nodes.N.gpus=COUNT)")
    return passed(id_, what)


@dataclass(frozen=True)
class Networks:
    """This machine's networks as the isolation rule needs them (cluster/nodes.py measures them)."""

    interfaces: dict[str, list[str]]  # interface -> its addresses with prefix length, `10.200.0.2/24`
    default_route: list[str]  # the interfaces that carry a default route


PRIVATE_RANGES = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                    "fc00::/7", "169.254.0.0/16", "fe80::/10")]
FIREWALL_TABLE = "dsv4setup_cluster"
ISOLATION_WHY = ("Ray's token protects Ray only; vLLM's own inter-node traffic (Gloo/NCCL and a ZMQ broadcast "
                 "whose messages are unpickled) has no authentication at all, so only an isolated link protects it")


def _range(address: str) -> str:
    """`private`, `public` (globally routed) or `other` (e.g. 100.64.0.0/10, shared by a provider)."""
    ip = ipaddress.ip_address(address)
    if any(ip in net for net in PRIVATE_RANGES if net.version == ip.version):
        return "private"
    return "public" if ip.is_global else "other"


def firewall_rules(interface: str, peers: list[str]) -> tuple[list[str], list[str]]:
    """Input rules for one node's cluster interface that accept only its peers (nft, iptables forms).
    Printed for the user, never applied: they are root's to decide."""
    v4 = [p for p in peers if ipaddress.ip_address(p).version == 4]
    v6 = [p for p in peers if ipaddress.ip_address(p).version == 6]
    t = ["inet", FIREWALL_TABLE]
    nft = [shlex.join(["nft", "add", "table", *t]),
           shlex.join(["nft", "add", "chain", *t, "input", "{ type filter hook input priority 0 ; policy accept ; }"]),
           shlex.join(["nft", "add", "rule", *t, "input", "iifname", interface, "ct", "state", "established,related",
                       "accept"])]
    nft += [shlex.join(["nft", "add", "rule", *t, "input", "iifname", interface, family, "saddr",
                        "{ " + ", ".join(found) + " }", "accept"]) for family, found in (("ip", v4), ("ip6", v6))
            if found]
    nft.append(shlex.join(["nft", "add", "rule", *t, "input", "iifname", interface, "drop"]))
    iptables = []
    for tool, found in (("iptables", v4), ("ip6tables", v6)):  # both: the link drops what is not a peer's
        iptables += [shlex.join([tool, "-A", "INPUT", "-i", interface, "-m", "conntrack", "--ctstate",
                                 "ESTABLISHED,RELATED", "-j", "ACCEPT"]),
                     *([shlex.join([tool, "-A", "INPUT", "-i", interface, "-s", ",".join(found), "-j", "ACCEPT"])]
                       if found else []),
                     shlex.join([tool, "-A", "INPUT", "-i", interface, "-j", "DROP"])]
    return nft, iptables


def _isolation_fix(multi: MultiNode, node: NodeSpec | None) -> str:
    """Firewall rules for this machine's node (else the head's), limited to the other nodes' addresses."""
    node = node or multi.head
    interface = multi.interface(node)
    peers = [str(n.address) for n in multi.nodes if n is not node and n.address]
    if not interface or not peers:
        return (f"{ISOLATION_WHY}. Use a dedicated link between the nodes only; set each node's interface "
                "(--set multinode.nodes.N.interface=IFACE) to get firewall rules for it")
    nft, iptables = firewall_rules(interface, peers)
    return (f"{ISOLATION_WHY}. Keep the nodes on a dedicated link that nothing else reaches, and let only the "
            f"peers in on node {node.name}'s {interface} (as root, not applied by dsv4setup; the same on every node "
            f"with its own peers). nft: {' && '.join(nft)}  iptables: {' && '.join(iptables)}")


def isolation(multi: MultiNode, networks: Networks | None) -> Finding:
    """The inter-node link is a private network of the nodes only: every address in a private range
    (RFC 1918, ULA or link-local); measured here, every node on this node's subnet and that interface
    not the one of the default route (a general LAN, routed beyond). A public address fails: vLLM's
    unauthenticated traffic would be open to whoever routes to it. A routed or shared private network
    warns: a firewall may make it safe, which this machine cannot see."""
    id_ = "topology.cluster_isolation"
    addressed = [n for n in multi.nodes if n.address]
    try:
        ranges = {n.name: _range(str(n.address)) for n in addressed}
    except ValueError:
        return skipped(id_, "a node's address is not an IP address (see topology.cluster_addresses)")
    node = _this_node(multi, networks_addresses(networks)) if networks is not None else None
    fix = _isolation_fix(multi, node)
    public = [f"{n.name} {n.address}" for n in addressed if ranges[n.name] == "public"]
    if public:
        return failed(id_, f"node address on a public, routed network: {', '.join(public)}", fix)
    other = [f"{n.name} {n.address}" for n in addressed if ranges[n.name] == "other"]
    if other:
        return warned(id_, f"node address outside the private ranges (RFC 1918, ULA): {', '.join(other)}", fix)
    if networks is None or node is None:
        return Finding(id_, "pass", "every node address is private (RFC 1918/ULA); run doctor on each node to "
                                    "check its link. " + ISOLATION_WHY, fix)
    subnet = next((ipaddress.ip_interface(a).network for found in networks.interfaces.values() for a in found
                   if a.split("/")[0] == node.address), None)
    outside = [f"{n.name} {n.address}" for n in addressed if subnet is not None
               and ipaddress.ip_address(str(n.address)) not in subnet]
    if outside:
        return warned(id_, f"nodes outside node {node.name}'s subnet {subnet}: {', '.join(outside)} (the traffic "
                           "crosses a router)", fix)
    interface = multi.interface(node)
    if interface in networks.default_route:
        return warned(id_, f"node {node.name}'s link {interface} carries this machine's default route: a general "
                           "network, not one of the nodes only", fix)
    return Finding(id_, "pass", f"node {node.name}: {interface} ({subnet}) is private, holds every node and no "
                                f"default route. {ISOLATION_WHY}", fix)  # the rules still: defence in depth


def networks_addresses(networks: Networks) -> dict[str, list[str]]:
    return {name: [a.split("/")[0] for a in found] for name, found in networks.interfaces.items()}


def doctor_findings(profile: Profile, addresses: dict[str, list[str]] | None, visible: int,
                    networks: Networks | None = None) -> list[Finding]:
    """What doctor judges of a multi-node profile on one machine (`addresses`: its interfaces, None when
    judging a saved snapshot; `visible`: the snapshot's GPUs; `networks`: its subnets and default route,
    None when not measured); nothing for a single-node profile."""
    if profile.multinode is None:
        return []
    return [node_addresses(profile.multinode), this_link(profile.multinode, addresses),
            isolation(profile.multinode, networks), node_gpus(profile, addresses, visible), parallel(profile)]


def _set_interface(id_: str, summary: str, index: int, carrier: str) -> Finding:
    """The fix for a node's interface: once with --set, or kept in the workdir by the command."""
    item = f"multinode.nodes.{index}.interface={carrier}"
    return Finding(id_, "fail", summary, f"--set {item}, or keep it: dsv4setup profile set {item}",
                   shlex.join(profile_set_command(item)))
