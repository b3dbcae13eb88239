"""A switch killed while a `--user` unit ran the new generation: `recover` (the first thing `up` does) puts the
records and pointer back and installs the unit again for the generation it restores, which then serves.

A real systemd user manager (skipped where none can run, see tests/service/conftest.py), a real release-2
workdir with a real venv; what cannot be here is vLLM in that venv: a stand-in `vllm.entrypoints.openai.api_server`
module that answers /health (fake_vllm_module_in_the_venv) is the only fake.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dsv4setup.core.generations import Marker, Pointer, read_pointer, write_marker, write_pointer
from dsv4setup.core.state import load_state, save_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.manager import server_state
from dsv4setup.serve.process import read_record
from dsv4setup.service.manage import ServedCommand, install_command, remove, status
from dsv4setup.service.systemd import read_installed
from dsv4setup.upgrade import recover
from tests.serve.conftest import free_port
from tests.service.conftest import user_manager  # noqa: F401 (fixture)
from tests.upgrade.test_generations import LEGACY_NAME, journal, make_generation, release_2_workdir


def fake_vllm_module_in_the_venv(venv: Path) -> None:
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    package = Path(site) / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(
        "import argparse, http.server\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--host', default='127.0.0.1')\n"
        "parser.add_argument('--port', type=int)\n"
        "args, _ = parser.parse_known_args()\n"
        "class Health(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'{}')\n"
        "print('INFO:     Application startup complete.', flush=True)\n"
        "http.server.HTTPServer((args.host, args.port), Health).serve_forever()\n")


def exec_start(unit_file: str) -> str:
    return next(line for line in Path(unit_file).read_text().splitlines() if line.startswith("ExecStart="))


def test_recover_points_the_user_unit_back_at_the_restored_generation_and_it_serves(
        tmp_path: Path, user_manager: Path) -> None:  # noqa: F811
    root = release_2_workdir(tmp_path / "wd")
    legacy = root / LEGACY_NAME
    fake_vllm_module_in_the_venv(legacy)
    port = free_port()
    state = load_state(root / "state.json")
    state.steps["preflight"].outputs = {"snapshot": str(root / "snapshot.json"), "report": str(root / "report.json"),
                                        "recommendation": None, "findings": {}, "warnings": []}  # as `up` now writes
    old_records = {n: state.steps[n].model_dump(mode="json") for n in ("vllm", "patches")}
    write_marker(legacy, Marker(name=LEGACY_NAME, vllm_version="0.32.0", created_at="2026-12-07T20:00:00+00:00",
                                uid=os.getuid(), complete=True, records=old_records))
    new = make_generation(root, "0.33.0-bbbbbbbb", "2026-12-07T20:00:00+00:00")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(new)], check=True, timeout=120)
    fake_vllm_module_in_the_venv(new)
    write_pointer(root, Pointer("0.33.0-bbbbbbbb", LEGACY_NAME))
    (root / "dsv4setup.yaml").write_text(f"serve:\n  port: {port}\nvllm:\n  version: 0.33.0\n")
    workdir = Workdir(root)
    # killed while switching: the unit already names the new generation's interpreter, and serves
    argv = [str(new / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--port", str(port)]
    installed = install_command(workdir, "user", ServedCommand(argv, {}, "127.0.0.1", port, 120, None, "new"))
    try:
        assert str(new) in exec_start(installed["unit_file"]) and server_state(workdir).healthy
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        state.upgrade = journal("switching", from_generation=LEGACY_NAME).model_copy(update={"pid": dead.pid})
        save_state(root / "state.json", state)

        message = recover(workdir)

        assert message is not None and LEGACY_NAME in message
        assert read_pointer(root) == Pointer(LEGACY_NAME, None)
        assert load_state(root / "state.json").steps["vllm"].outputs["version"] == "0.32.0"
        unit = read_installed(workdir)
        assert unit is not None
        assert str(legacy / "bin" / "python") in exec_start(unit.unit_file) and str(new) not in exec_start(
            unit.unit_file)
        shown = status(workdir)
        assert shown["state"]["active"] == "active" and shown["server"]["healthy"]
        record = read_record(workdir)
        assert record is not None and record.argv[0] == str(legacy / "bin" / "python")
        assert record.command_fingerprint == unit.command_fingerprint
    finally:
        remove(workdir)
