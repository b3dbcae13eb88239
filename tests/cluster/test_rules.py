"""Cluster rules as pure judgements: documents in, a Finding with the concrete fix out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsv4setup.cli import main
from dsv4setup.cluster.rules import (
    Networks,
    doctor_findings,
    firewall_rules,
    gpu_kind,
    head_port,
    isolation,
    link,
    node_gpus,
    pipeline_size,
    same_gpus,
    this_link,
)
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.model import MultiNode, NodeSpec
from dsv4setup.profiles.resolve import resolve_profile
from tests.conftest import REPO_ROOT

SNAPSHOT = REPO_ROOT / "tests" / "preflight" / "fixtures" / "h200-x8-nvlink.json"

SPARKS = MultiNode(nccl_socket_ifname="enp1s0f1np1", nodes=[
    NodeSpec(name="spark-1", role="head", address="192.168.100.10"),
    NodeSpec(name="spark-2", role="worker", address="192.168.100.11")])
WORKER = SPARKS.nodes[1]
ADDRESSES = {"lo": ["127.0.0.1"], "enP7s7": ["10.0.0.5"], "enp1s0f1np1": ["192.168.100.11"]}


def with_node(**changes: str | None) -> MultiNode:
    return SPARKS.model_copy(update={"nodes": [SPARKS.nodes[0], WORKER.model_copy(update=changes)]})


def test_a_node_on_its_interface_passes() -> None:
    finding = link(SPARKS, WORKER, ADDRESSES)
    assert finding.status == "pass" and finding.summary == "node spark-2: 192.168.100.11 on enp1s0f1np1"


def test_the_address_must_be_set_not_loopback_and_this_machines() -> None:
    for changes, says, fix in (
            ({"address": None}, "has no address", "--set multinode.nodes.1.address=IP"),
            ({"address": "127.0.0.1"}, "is a loopback address", "--set multinode.nodes.1.address=IP"),
            ({"address": "192.168.100.99"}, "is not an address of this machine", "this machine has: 127.0.0.1, "
                                                                                   "10.0.0.5, 192.168.100.11")):
        multi = with_node(**changes)
        finding = link(multi, multi.nodes[1], ADDRESSES)
        assert finding.status == "fail" and says in finding.summary and fix in (finding.fix or ""), changes


def test_the_interface_must_exist_and_carry_the_address_and_the_fix_names_the_one_that_does() -> None:
    for multi, says in ((with_node(interface="enp1s0f0np0"), "this machine has no interface 'enp1s0f0np0'"),
                        (with_node(interface="enP7s7"), "interface 'enP7s7' does not carry 192.168.100.11"),
                        (SPARKS.model_copy(update={"nccl_socket_ifname": None}), "no inter-node interface")):
        finding = link(multi, multi.nodes[1], ADDRESSES)
        assert finding.status == "fail" and says in finding.summary
        assert (finding.fix or "").startswith("--set multinode.nodes.1.interface=enp1s0f1np1")


def test_a_worker_that_cannot_reach_the_head_port_is_told_what_to_check() -> None:
    assert head_port(SPARKS, None).status == "pass"
    finding = head_port(SPARKS, "connection refused")
    assert finding.status == "fail" and "192.168.100.10:6379 cannot be reached: connection refused" in finding.summary
    assert "`dsv4setup up --node spark-1`" in (finding.fix or "")
    assert "--set multinode.nodes.0.address=IP" in (finding.fix or "")


def test_every_node_needs_the_heads_gpu_model_and_memory() -> None:
    h200 = {"name": "NVIDIA H200", "memory_total_bytes": 141 * 2**30}
    gb10 = {"name": "NVIDIA GB10", "memory_total_bytes": None}  # unified memory: NVML reports none
    assert gpu_kind([h200, h200]) == "2 x NVIDIA H200 (141 GiB)" and gpu_kind([]) == "no GPU"
    assert same_gpus(SPARKS, {"spark-1": [gb10], "spark-2": [gb10]}).summary == "every node: 1 x NVIDIA GB10"
    other = same_gpus(SPARKS, {"spark-1": [gb10], "spark-2": [h200]})
    assert other.status == "fail"
    assert other.summary == "node spark-2 has 1 x NVIDIA H200 (141 GiB) (head spark-1: 1 x NVIDIA GB10)"
    smaller = same_gpus(SPARKS, {"spark-1": [h200], "spark-2": [{**h200, "memory_total_bytes": 80 * 2**30}]})
    assert smaller.status == "fail" and "80 GiB" in smaller.summary


def test_doctor_judges_every_nodes_address_this_machines_link_and_tp_x_pp(workdir: Workdir) -> None:
    x2 = resolve_profile(workdir, "cpu-tiny-x2", []).profile
    here = {"lo": ["127.0.0.1"], "eth9": ["10.200.0.2"]}  # node2's address, not on the profile's dsv0
    found = {f.id: f for f in doctor_findings(x2, here, 0)}
    assert [f.status for f in found.values()] == ["pass", "fail", "pass", "skip", "pass"]  # CPU nodes: no GPU count
    assert found["topology.cluster_link"].fix.startswith("--set multinode.nodes.1.interface=eth9")
    assert found["topology.cluster_link"].command == "dsv4setup profile set multinode.nodes.1.interface=eth9"
    assert found["topology.cluster_parallel"].summary == "TP 2 x PP 1 = 2 ranks; the nodes hold 2 GPUs"
    assert doctor_findings(resolve_profile(workdir, "cpu-tiny", []).profile, here, 0) == []


def test_doctor_without_the_machine_skips_the_link_and_still_judges_the_profile(workdir: Workdir) -> None:
    x2 = resolve_profile(workdir, "cpu-tiny-x2", ["multinode.nodes.1.address=127.0.0.2",
                                                  "serve.extra_args=[\"--pipeline-parallel-size\", \"2\"]"]).profile
    found = {f.id: f for f in doctor_findings(x2, None, 0)}
    assert found["topology.cluster_link"].status == "skip"
    assert found["topology.cluster_addresses"].status == "fail"
    assert "node node2's address 127.0.0.2 is a loopback address" in found["topology.cluster_addresses"].summary
    assert (found["topology.cluster_addresses"].fix or "").startswith("--set multinode.nodes.1.address=IP")
    assert found["topology.cluster_parallel"].status == "fail"
    assert found["topology.cluster_parallel"].summary == "TP 2 x PP 2 = 4 ranks; the nodes hold 2 GPUs"
    assert pipeline_size(["-pp=3"]) == 3 and pipeline_size(["--max-num-seqs", "4"]) == 1


def test_this_machine_being_none_of_the_nodes_is_a_warning_naming_them() -> None:
    finding = this_link(SPARKS, {"lo": ["127.0.0.1"], "eth0": ["10.0.0.9"]})
    assert finding.status == "warn" and "spark-1 192.168.100.10, spark-2 192.168.100.11" in finding.summary
    assert this_link(SPARKS, ADDRESSES).summary == "node spark-2: 192.168.100.11 on enp1s0f1np1"


def test_doctor_json_carries_the_cluster_findings_in_its_schema(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["doctor", "--snapshot", str(SNAPSHOT), "--profile", "cpu-tiny-x2", "--workdir", str(tmp_path),
              "--json"])
    doc = json.loads(capsys.readouterr().out)
    validate_document(doc)
    assert {c["id"]: c["status"] for c in doc["checks"] if "cluster" in c["id"]} == {
        "topology.cluster_addresses": "pass", "topology.cluster_link": "skip", "topology.cluster_node_gpus": "skip",
        "topology.cluster_parallel": "pass", "topology.cluster_isolation": "pass"}


def test_this_machines_gpus_must_be_the_ones_its_node_lists(workdir: Workdir) -> None:
    sparks = resolve_profile(workdir, "dgx-spark-gb10-x2", ["multinode.nodes.0.address=192.168.100.10",
                                                            "multinode.nodes.1.address=192.168.100.11"]).profile
    assert sparks.multinode is not None
    head = sparks.multinode.head
    here = {"lo": ["127.0.0.1"], str(sparks.multinode.interface(head)): [str(head.address)]}
    index = sparks.multinode.nodes.index(head)
    assert node_gpus(sparks, here, head.gpus).status == "pass"
    fewer = node_gpus(sparks, here, 0)
    assert fewer.status == "fail" and fewer.summary == f"node {head.name} lists {head.gpus} GPUs, this machine shows 0"
    assert f"--set multinode.nodes.{index}.gpus=0" in (fewer.fix or "")
    assert node_gpus(sparks, None, 0).status == "skip"


LINK = Networks({"lo": ["127.0.0.1/8"], "enP7s7": ["10.0.0.5/24"], "enp1s0f1np1": ["192.168.100.11/24"]},
                default_route=["enP7s7"])


def test_a_private_dedicated_link_passes_and_says_what_the_token_does_not_protect() -> None:
    finding = isolation(SPARKS, LINK)
    assert finding.status == "pass", finding
    assert finding.summary.startswith("node spark-2: enp1s0f1np1 (192.168.100.0/24) is private")
    assert "Ray's token protects Ray only" in finding.summary and "unpickled" in finding.summary
    assert "iptables -A INPUT -i enp1s0f1np1 -s 192.168.100.10 -j ACCEPT" in (finding.fix or "")
    # judged from the profile alone (a snapshot, or not a node): private addresses pass, nothing measured
    assert isolation(SPARKS, None).status == "pass"


def test_a_node_address_on_a_public_network_fails() -> None:
    """Fail, not warn: vLLM's unauthenticated Gloo/NCCL and pickled ZMQ traffic would be open to whoever
    routes to that address; no firewall dsv4setup can see makes up for that."""
    public = with_node(address="145.40.1.7")
    finding = isolation(public, Networks({"eth0": ["145.40.1.7/24"]}, ["eth0"]))
    assert finding.status == "fail"
    assert finding.summary == "node address on a public, routed network: spark-2 145.40.1.7"
    assert "nft add rule inet dsv4setup_cluster input iifname enp1s0f1np1 ip saddr '{ 192.168.100.10 }' accept" \
        in (finding.fix or "")
    assert isolation(public, None).status == "fail"  # the profile alone tells it


def test_a_private_link_that_is_the_general_network_or_routed_warns() -> None:
    """Warn: a private LAN with a gateway, or nodes on different subnets, may be firewalled; this machine
    cannot see it, so doctor says what to check and gives the rules."""
    lan = isolation(SPARKS, Networks({"enp1s0f1np1": ["192.168.100.11/24"]}, default_route=["enp1s0f1np1"]))
    assert lan.status == "warn" and "carries this machine's default route" in lan.summary
    routed = isolation(with_node(address="192.168.100.20"), Networks({"enp1s0f1np1": ["192.168.100.20/28"]}, []))
    assert routed.status == "warn" and routed.summary == ("nodes outside node spark-2's subnet 192.168.100.16/28: "
                                                          "spark-1 192.168.100.10 (the traffic crosses a router)")
    cgnat = isolation(with_node(address="100.64.0.2"), None)
    assert cgnat.status == "warn" and "outside the private ranges" in cgnat.summary


def test_the_firewall_rules_let_only_the_peers_in_on_the_link() -> None:
    nft, iptables = firewall_rules("dsv0", ["10.200.0.2", "fd00::2"])
    assert nft == ["nft add table inet dsv4setup_cluster",
                   "nft add chain inet dsv4setup_cluster input "
                   "'{ type filter hook input priority 0 ; policy accept ; }'",
                   "nft add rule inet dsv4setup_cluster input iifname dsv0 ct state established,related accept",
                   "nft add rule inet dsv4setup_cluster input iifname dsv0 ip saddr '{ 10.200.0.2 }' accept",
                   "nft add rule inet dsv4setup_cluster input iifname dsv0 ip6 saddr '{ fd00::2 }' accept",
                   "nft add rule inet dsv4setup_cluster input iifname dsv0 drop"]
    assert iptables[1] == "iptables -A INPUT -i dsv0 -s 10.200.0.2 -j ACCEPT"
    assert iptables[-2:] == ["ip6tables -A INPUT -i dsv0 -s fd00::2 -j ACCEPT", "ip6tables -A INPUT -i dsv0 -j DROP"]
    assert firewall_rules("eth 1;x", ["10.0.0.2"])[1][-1] == "ip6tables -A INPUT -i 'eth 1;x' -j DROP"  # quoted
