"""A system unit: what root is asked to run, whom the unit runs as, and what `service remove` deletes.

- The printed root commands are run here for real through `bash -c` (their targets moved into the
  test's directory, systemctl and dsv4setup replaced by stubs that record their argv: no system
  manager is touched): a workdir named `a b;id>pwned;` runs nothing, and root installs a copy of
  the unit whose sha256 it checked, so a unit swapped or symlinked after `service install` is refused.
- User= is the real uid's name from the password database, whatever $LOGNAME says; root gets a
  root unit only with --allow-root.
- `service remove` acts only on the unit it computes; a record naming another file is refused and
  that file stays.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dsv4setup.core.errors import UsageError
from dsv4setup.core.workdir import Workdir
from dsv4setup.service.manage import ServedCommand, _root_commands, install_command
from dsv4setup.service.systemd import InstalledUnit, record_path, unit_name
from tests.faults.tally import attack
from tests.service import unit_syntax

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "a b;id>pwned;"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to act as another uid, or to be refused as root)")


def served(argv0: str = sys.executable) -> ServedCommand:
    return ServedCommand([argv0, "-V"], {"A": "1"}, "127.0.0.1", 8000, 60, None, "test")


def system_install(workdir: Workdir) -> dict:  # type: ignore[type-arg]
    return install_command(workdir, "system", served(), allow_root=True)


def run_as_root(command: str, sandbox: Path, target: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`command` through bash in `sandbox`, /etc/systemd/system/NAME moved to `target`, stubs for the rest."""
    stubs = sandbox / "stubs"
    stubs.mkdir(exist_ok=True)
    for tool in ("systemctl", "dsv4setup"):
        (stubs / tool).write_text(f'#!/bin/sh\nprintf "%s\\n" {tool} "$@" >> "{sandbox}/calls"\n')
        (stubs / tool).chmod(0o755)
    moved = command.replace(shlex.quote(f"/etc/systemd/system/{name}"), shlex.quote(str(target)))
    return subprocess.run(["bash", "-c", moved], cwd=sandbox, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"})


@pytest.mark.security
def test_root_commands_run_nothing_from_a_hostile_workdir_name_and_install_the_checked_copy(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    workdir = Workdir(tmp_path / HOSTILE).ensure()
    doc = system_install(workdir)
    name, unit_file = doc["unit"], Path(doc["unit_file"])
    down, install, reload, enable = doc["root_commands"]
    assert shlex.split(down, comments=True) == ["dsv4setup", "down", "--workdir", str(workdir.root)]
    assert shlex.split(reload) == ["systemctl", "daemon-reload"]
    assert shlex.split(enable) == ["systemctl", "enable", "--now", name]
    target = sandbox / "etc" / name
    target.parent.mkdir()
    for command in doc["root_commands"]:
        done = run_as_root(command, sandbox, target, name)
        assert done.returncode == 0, (command, done.stderr)
    pwned = (sandbox / "pwned").exists() or bool(list(tmp_path.rglob("pwned")))
    attack("unit", "a workdir named `a b;id>pwned;`, root pasting the printed commands", got="`id` never ran"
           if not pwned else "`id` ran", reached=pwned)
    assert not pwned  # `id` never ran
    assert target.read_bytes() == unit_file.read_bytes() and target.stat().st_mode & 0o777 == 0o644
    calls = (sandbox / "calls").read_text().splitlines()
    assert calls == ["dsv4setup", "down", "--workdir", str(workdir.root), "systemctl", "daemon-reload",
                     "systemctl", "enable", "--now", name]


@pytest.mark.parametrize("swap", ["edited", "symlinked"])
@pytest.mark.security
def test_root_refuses_a_unit_changed_after_install_printed_its_commands(tmp_path: Path, swap: str) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    workdir = Workdir(tmp_path / "wd").ensure()
    doc = system_install(workdir)
    name, unit_file = doc["unit"], Path(doc["unit_file"])
    text = unit_file.read_text()
    if swap == "edited":  # same length, one more directive: the size alone would not tell
        unit_file.write_text(text.replace("Type=exec\n", "ExecStartPre=+/x\n", 1)[:len(text)])
    else:  # the very same bytes, behind a symlink root must not follow
        copy = tmp_path / "elsewhere.service"
        copy.write_text(text)
        unit_file.unlink()
        unit_file.symlink_to(copy)
    target = sandbox / name
    done = run_as_root(doc["root_commands"][1], sandbox, target, name)
    attack("unit", f"the unit {swap} after `install` printed root's commands", got=f"root's install exit "
           f"{done.returncode}", reached=target.exists())
    assert done.returncode != 0 and not target.exists(), done.stderr
    said = done.stdout + done.stderr
    assert ("did NOT match" in said) if swap == "edited" else ("Too many levels of symbolic links" in said)


def test_root_commands_to_remove_a_system_unit_are_quoted_words(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / HOSTILE).ensure()
    name = unit_name(workdir)
    unit = InstalledUnit("system", name, str(workdir.run_dir / name), "f" * 16, "127.0.0.1", 8000)
    assert [shlex.split(c) for c in _root_commands(unit, workdir, "remove")] == [
        ["systemctl", "disable", "--now", name], ["rm", "-f", f"/etc/systemd/system/{name}"],
        ["systemctl", "daemon-reload"]]


def _in_child_as(uid: int, work: object) -> str:
    """`work()` in a forked child whose real and effective uid are `uid`, with LOGNAME=USER=root; its result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.environ.update(LOGNAME="root", USER="root")
            result = work()  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = f"error: {exc!r}"
        os.write(write_end, str(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    return result


@as_root
@pytest.mark.security
def test_user_is_the_real_uid_from_the_password_database_not_logname(tmp_path: Path) -> None:
    """The issue's repro: uid 65534 with LOGNAME=root got `User=root`; root then ran the user's venv."""
    try:
        nobody = pwd.getpwuid(65534).pw_name
    except KeyError:
        pytest.skip("no passwd entry for uid 65534")
    system_install(Workdir(tmp_path / "warm").ensure())  # every module loaded before the child drops root
    base = Path(tempfile.mkdtemp(prefix="dsv4setup-unit-uid-"))
    try:
        os.chown(base, 65534, 65534)

        def install_as_nobody() -> str:
            workdir = Workdir(base / "wd").ensure()
            doc = install_command(workdir, "system", served("/usr/bin/env"))  # nobody cannot reach into /root
            return Path(doc["unit_file"]).read_text()

        text = _in_child_as(65534, install_as_nobody)
        assert not text.startswith("error:"), text
        users = [d.value for d in unit_syntax.directives(text) if d.key == "User"]
        attack("unit", "uid 65534 with LOGNAME=root installing a system unit", got=f"User={','.join(users)}",
               reached="root" in users)
        assert users == [nobody]
    finally:
        shutil.rmtree(base)


@as_root
def test_root_gets_a_root_unit_only_with_allow_root(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "wd").ensure()
    with pytest.raises(UsageError) as refused:
        install_command(workdir, "system", served())
    assert refused.value.reference == "service-user-root" and "--allow-root" in (refused.value.fix or "")
    assert not list(workdir.run_dir.glob("*.service")) and not record_path(workdir).exists()

    workdir.venv_python.parent.mkdir(parents=True)
    workdir.venv_python.symlink_to(sys.executable)  # the serving interpreter only has to exist to render a unit
    base = [sys.executable, "-m", "dsv4setup", "service", "install", "--system", "--profile", "cpu-tiny",
            "--workdir", str(workdir.root), "--json"]
    done = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 2 and json.loads(done.stdout)["reference"] == "service-user-root", done.stdout
    done = subprocess.run([*base, "--allow-root"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    text = Path(json.loads(done.stdout)["unit_file"]).read_text()
    assert [d.value for d in unit_syntax.directives(text) if d.key == "User"] == ["root"]


@pytest.mark.security
@pytest.mark.parametrize("scope", ["system", "user"])
def test_remove_refuses_a_record_naming_another_file_and_leaves_that_file(
        tmp_path: Path, scope: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's repro: a `unit_file` put in run/service.json was deleted by `service remove`."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    workdir = Workdir(tmp_path / "wd").ensure()
    victim = tmp_path / "precious.conf"
    victim.write_text("keep me\n")
    record_path(workdir).write_text(json.dumps({
        "scope": scope, "name": unit_name(workdir), "unit_file": str(victim), "command_fingerprint": "0" * 16,
        "host": "127.0.0.1", "port": 8000}))
    done = subprocess.run([sys.executable, "-m", "dsv4setup", "service", "remove", "--workdir", str(workdir.root),
                           "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
    doc = json.loads(done.stdout)
    attack("files", f"run/service.json naming another file ({scope} scope), `service remove`",
           got=f"exit {done.returncode} ({doc.get('reference')})", reached=not victim.exists())
    assert done.returncode == 2 and doc["reference"] == "service-record-foreign", doc
    assert str(victim) in doc["message"] and "leaves the file that record names alone" in doc["message"]
    assert victim.read_text() == "keep me\n" and record_path(workdir).exists()


def test_remove_of_a_system_unit_root_has_not_installed_deletes_only_its_own_files(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "wd").ensure()
    doc = system_install(workdir)
    done = subprocess.run([sys.executable, "-m", "dsv4setup", "service", "remove", "--workdir", str(workdir.root),
                           "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not Path(doc["unit_file"]).exists() and not record_path(workdir).exists()
    assert workdir.run_dir.is_dir() and workdir.state_file.parent.is_dir()
