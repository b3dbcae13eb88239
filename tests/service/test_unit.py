"""The generated units: `systemd-analyze verify`, and a real systemd user manager running one.

The manager test runs the fake server of tests/serve (a real process answering /health) as the
unit's command: it proves what systemd does with the unit (exact argv and env through its
quoting, readiness, restart after a kill, stop through systemctl, the hand-over from a server
that `up` started) in seconds. The same cycle on real vLLM is test_service_e2e.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.manager import down, server_state
from dsv4setup.serve.process import read_record, start_server, write_record
from dsv4setup.service.manage import ServedCommand, install_command, remove, status
from dsv4setup.service.systemd import current_user, read_installed, unit_state
from dsv4setup.service.unit import UnitSpec, render_unit
from tests.serve.conftest import fake_argv, free_port, processes_with_id

# what systemd could take as structure, specifier, variable or escape, and must give back as is
ODD_ARG = '{"method": "mtp", "num_speculative_tokens": 1} 100% %n $HOME ${HOME} $$ \\ "q" \'s\' ; \t é ✓ \x01 end\\'
ODD_ENV = {"DSV4SETUP_TEST_ODD": 'a b 50% %i $HOME ${HOME} "q" \'s\' \\ \t é \x01 end\\', "VLLM_NO_USAGE_STATS": "1"}


def spec(scope: str, workdir: Path, key_file: Path | None) -> UnitSpec:
    return UnitSpec(scope=scope, workdir=workdir, argv=fake_argv("ready", 8000, "--line", ODD_ARG), env=ODD_ENV,
                    host="127.0.0.1", port=8000, ready_timeout_s=600, api_key_file=key_file,
                    user=current_user() if scope == "system" else None)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed "
                    "(Debian: apt-get install systemd)")
@pytest.mark.parametrize("scope", ["user", "system"])
def test_generated_units_pass_systemd_analyze_verify(tmp_path: Path, scope: str) -> None:
    workdir = tmp_path / "a workdir with 100% odd name"
    unit = tmp_path / f"dsv4setup-test-{scope}.service"
    unit.write_text(render_unit(spec(scope, workdir, workdir / "secrets" / "service.key")))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = unit.read_text()
    assert "Restart=on-failure" in text and "StartLimitBurst=3" in text and "dsv4setup.service.ready" in text
    assert ("WantedBy=default.target" if scope == "user" else f"User={current_user()}") in text


def _wait(predicate, timeout_s: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_user_unit_runs_the_exact_command_restarts_after_a_kill_and_stops_via_systemctl_with_fake_server_process(
        tmp_path: Path, user_manager: Path) -> None:
    workdir = Workdir(tmp_path / "wd").ensure()
    port = free_port()
    argv = fake_argv("ready", port, "--line", ODD_ARG)
    # a server started the way `up` starts one: install hands it over (stops it) before the unit starts
    before, proc = start_server(argv, ODD_ENV, host="127.0.0.1", port=port, log_path=workdir.log_file("serve"),
                                cwd=workdir.root)
    write_record(workdir, before)
    _wait(lambda: server_state(workdir).healthy)
    doc = install_command(workdir, "user", ServedCommand(argv, ODD_ENV, "127.0.0.1", port, 60, "k3y-s3cret-x",
                                                         "fake server"))
    validate_document(doc)
    proc.wait(timeout=30)
    assert processes_with_id(before.serve_id) == []  # the server `up` started is gone: never two servers
    unit = read_installed(workdir)
    assert unit is not None and Path(doc["unit_file"]).parent == user_manager
    assert doc["installed"] and doc["state"]["active"] == "active" and doc["server"]["healthy"]
    assert doc["server"]["managed_by_unit"] and doc["linger"]["command"] in (None, f"loginctl enable-linger "
                                                                                   f"{doc['linger']['user']}")
    record = read_record(workdir)
    server = psutil.Process(record.pid)
    assert server.cmdline() == argv  # systemd's quoting gave back exactly the plan's argv
    environ = server.environ()
    assert environ["DSV4SETUP_TEST_ODD"] == ODD_ENV["DSV4SETUP_TEST_ODD"] and environ["VLLM_API_KEY"] == "k3y-s3cret-x"
    assert "k3y-s3cret-x" not in Path(doc["unit_file"]).read_text()
    key_file = workdir.secrets_dir / "service.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    # the unit's server output reaches logs/serve.log through the log pump (after the first server's)
    _wait(lambda: workdir.log_file("serve").read_text().count("Application startup complete") >= 2)

    # a killed server comes back by itself (Restart=on-failure), healthy, with a new record
    os.kill(record.pid, signal.SIGKILL)
    _wait(lambda: (r := read_record(workdir)) is not None and r.pid != record.pid and server_state(workdir).healthy,
          timeout_s=90)
    assert unit_state(unit)["NRestarts"] == "1"
    assert processes_with_id(record.serve_id) == []

    # installing again with another command line replaces the running server (one server, the new argv)
    restarted = read_record(workdir)
    argv2 = fake_argv("ready", port, "--delay", "0.2")
    install_command(workdir, "user", ServedCommand(argv2, ODD_ENV, "127.0.0.1", port, 60, None, "fake server"))
    again = read_record(workdir)
    assert again.argv == argv2 and processes_with_id(restarted.serve_id) == [] and server_state(workdir).healthy

    # `down` acts through systemd: the unit is inactive (not restarted), nothing of the server is left
    stopped = down(workdir)
    assert stopped["was_running"] and unit_state(unit)["ActiveState"] == "inactive"
    assert read_record(workdir) is None and processes_with_id(again.serve_id) == []
    shown = status(workdir)
    validate_document(shown)
    assert shown["installed"] and shown["state"]["active"] == "inactive" and not shown["server"]["running"]

    removed = remove(workdir)
    validate_document(removed)
    assert not removed["installed"] and read_installed(workdir) is None and not Path(doc["unit_file"]).exists()
    assert not key_file.exists() and workdir.state_file.parent.exists()


def test_service_status_without_a_unit_and_system_install_prints_root_commands(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "wd").ensure()
    shown = status(workdir)
    validate_document(shown)
    assert not shown["installed"] and "service install --user" in shown["message"]
    doc = install_command(workdir, "system", ServedCommand([sys.executable, "-V"], {}, "127.0.0.1", 8000, 60, None,
                                                           "test"), allow_root=True)  # CI may run as root
    validate_document(doc)
    assert not doc["installed"] and Path(doc["unit_file"]).parent == workdir.run_dir
    name = doc["unit"]
    assert doc["root_commands"][1].startswith("t=$(mktemp) && ")  # the sha256-checked copy: test_root_commands.py
    assert doc["root_commands"][2:] == ["systemctl daemon-reload", f"systemctl enable --now {name}"]
    assert all("sudo" not in c for c in doc["root_commands"])
    out = subprocess.run([sys.executable, "-m", "dsv4setup", "service", "status", "--workdir", str(workdir.root),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["installed"] is False  # root has not copied it yet


def test_the_readiness_check_gives_up_once_the_server_has_exited(tmp_path: Path) -> None:
    """systemd waits for ExecStartPost even after the main process died: the check itself must stop then."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    done = subprocess.run([sys.executable, "-m", "dsv4setup.service.ready", "--host", "127.0.0.1", "--port",
                           str(free_port()), "--timeout", "3600"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MAINPID": str(gone.pid)})
    assert done.returncode == 1 and f"the server (pid {gone.pid}) exited before" in done.stderr


def test_a_user_unit_whose_server_exits_fails_its_start_with_fake_server_process(
        tmp_path: Path, user_manager: Path) -> None:
    """A generation that cannot start (the upgrade's bad flag): `systemctl restart` fails, it does not wait out
    the ready timeout, so the upgrade can switch back."""
    from dsv4setup.core.errors import DsvError

    workdir = Workdir(tmp_path / "wd").ensure()
    port = free_port()
    try:
        with pytest.raises(DsvError) as failed:
            install_command(workdir, "user", ServedCommand(fake_argv("exit", port), {}, "127.0.0.1", port, 600, None,
                                                           "fake"))
        assert "restart" in failed.value.message and "failed (exit" in failed.value.message
    finally:
        remove(workdir)
    assert read_installed(workdir) is None
