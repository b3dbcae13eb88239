"""A real systemd user manager for the service tests, where this machine can run one.

Containers rarely boot with systemd, and `systemd --user` refuses to start unless
/run/systemd/system exists ("Trying to run as user instance, but the system has not been
booted with systemd"). The fixture gives the manager a private mount namespace
(`unshare -m`, needs CAP_SYS_ADMIN) with that directory on a tmpfs, its own
XDG_RUNTIME_DIR and XDG_CONFIG_HOME; `systemctl --user` reaches it through
$XDG_RUNTIME_DIR/systemd/private. Nothing outside the test's temporary directory changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SYSTEMD = next((p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if Path(p).exists()), None)
START = "mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/system && exec {systemd} --user"


def _unusable() -> str | None:
    if SYSTEMD is None or shutil.which("systemctl") is None:
        return "systemd is not installed (apt-get install systemd)"
    if not Path("/run/systemd").is_dir():
        return "/run/systemd does not exist to mount the private tmpfs on"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no private mount namespace for a user manager (`unshare -m`: {probe.stderr.strip()})"
    return None


@pytest.fixture
def user_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A running `systemd --user`; yields its unit directory. Skips, saying why, where none can run."""
    reason = _unusable()
    if reason:
        pytest.skip(f"no systemd user manager here: {reason}")
    runtime, config = tmp_path / "xdg-runtime", tmp_path / "xdg-config"
    runtime.mkdir(mode=0o700)
    (config / "systemd" / "user").mkdir(parents=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "XDG_CONFIG_HOME": str(config)}
    log = (tmp_path / "user-manager.log").open("w")
    manager = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                START.format(systemd=SYSTEMD)], env=env, stdout=log, stderr=subprocess.STDOUT)
    socket = runtime / "systemd" / "private"
    deadline = time.monotonic() + 30
    while not socket.exists() and manager.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not socket.exists():
        manager.kill()
        pytest.skip(f"no systemd user manager here: `systemd --user` did not start "
                    f"(exit {manager.poll()}): {(tmp_path / 'user-manager.log').read_text()[-300:]}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    try:
        yield config / "systemd" / "user"
    finally:
        manager.terminate()  # the manager stops its units on the way out
        try:
            manager.wait(timeout=120)
        except subprocess.TimeoutExpired:
            manager.kill()
            manager.wait()
        log.close()
