"""systemd as dsv4setup uses it: the unit of a workdir, where it lives, systemctl, lingering.

Knows nothing of vLLM or profiles (the serve package calls it for the hand-over).

- The unit of a workdir is `dsv4setup-<workdir name>-<8 hex of its path>.service`, one per workdir.
- `--user`: the unit file goes into the user's systemd directory and dsv4setup runs
  `systemctl --user` itself.
- `--system`: dsv4setup never uses sudo; it writes the unit into `<workdir>/run/` and the
  user copies it to /etc/systemd/system as root (the commands are printed).
- `<workdir>/run/service.json` records which unit was installed, and the fingerprint of the
  command line it runs. A record is only believed when its unit is the one computed here (name,
  scope, file): dsv4setup never stops, starts or deletes a unit or file a record merely names.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from dsv4setup.core.errors import DsvError, StateError
from dsv4setup.core.fsutil import atomic_write_json
from dsv4setup.core.workdir import Workdir

Scope = Literal["user", "system"]
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
LINGER_DIR = Path("/var/lib/systemd/linger")
SYSTEMCTL_TIMEOUT_S = 30.0


def unit_name(workdir: Workdir) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]", "-", workdir.root.name)[:40] or "workdir"
    return f"dsv4setup-{slug}-{hashlib.sha256(str(workdir.root).encode()).hexdigest()[:8]}.service"


def user_unit_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def record_path(workdir: Workdir) -> Path:
    return workdir.run_dir / "service.json"


def unit_path(workdir: Workdir, scope: Scope) -> Path:
    """Where `service install` writes the workdir's unit: the user's unit directory, or <workdir>/run/ for root."""
    return (user_unit_dir() if scope == "user" else workdir.run_dir) / unit_name(workdir)


@dataclass(frozen=True)
class InstalledUnit:
    scope: Scope
    name: str
    unit_file: str  # where systemd reads it (user) or where dsv4setup wrote it for root to copy (system)
    command_fingerprint: str  # of the plan's argv + env the unit runs
    host: str
    port: int

    @property
    def loaded_file(self) -> Path:
        """The file systemd loads: the user unit, or the copy root made in /etc/systemd/system."""
        return Path(self.unit_file) if self.scope == "user" else SYSTEM_UNIT_DIR / self.name

    def systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *(["--user"] if self.scope == "user" else []), *args]


def read_recorded(workdir: Workdir) -> InstalledUnit | None:
    """The unit `service install` recorded for the workdir (its file may be gone, or not yet copied by root).

    StateError when the record names another unit or file than the one computed for this workdir."""
    try:
        unit = InstalledUnit(**json.loads(record_path(workdir).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    scope: Scope = unit.scope if unit.scope in ("user", "system") else "user"
    expected = unit_path(workdir, scope)
    if unit.scope != scope or unit.name != expected.name or unit.unit_file != str(expected):
        raise StateError(f"{record_path(workdir)} names the unit {unit.name!r} ({unit.scope}) at {unit.unit_file!r}, "
                         f"not this workdir's {scope} unit {expected}: dsv4setup acts only on the unit it computes "
                         "itself, and leaves the file that record names alone",
                         fix=f"if you did not write that record, delete it (`rm {record_path(workdir)}`) and run "
                             "`dsv4setup service install` again; if XDG_CONFIG_HOME differs from the one at "
                             "install time, set it back", reference="service-record-foreign")
    return unit


def read_installed(workdir: Workdir) -> InstalledUnit | None:
    """The unit recorded for the workdir, when its file is where systemd reads it; else None."""
    unit = read_recorded(workdir)
    return unit if unit is not None and unit.loaded_file.exists() else None


def write_installed(workdir: Workdir, unit: InstalledUnit) -> None:
    atomic_write_json(record_path(workdir), asdict(unit))


def systemctl(unit: InstalledUnit, *args: str, check: bool = True,
              timeout_s: float = SYSTEMCTL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run systemctl for the unit's scope; DsvError (what failed, the command, how to see why) when asked to check."""
    argv = unit.systemctl(*args)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise DsvError("systemctl is not installed on this machine",
                       fix="the service commands need systemd; run the server with `dsv4setup up` instead") from None
    except subprocess.TimeoutExpired:
        raise DsvError(f"`{' '.join(argv)}` did not finish in {timeout_s:.0f}s",
                       fix=f"see `{journal_command(unit)}`") from None
    if check and done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        root = unit.scope == "system" and os.geteuid() != 0
        raise DsvError(f"`{' '.join(argv)}` failed (exit {done.returncode}): {said[:400]}",
                       fix=f"run it as root: sudo {' '.join(argv)}" if root else f"see `{journal_command(unit)}`")
    return done


def require_user_manager() -> None:
    """DsvError unless `systemctl --user` reaches this user's systemd manager."""
    try:
        done = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, text=True,
                              timeout=SYSTEMCTL_TIMEOUT_S, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise DsvError(f"systemctl --user cannot be run here: {exc}",
                       fix="the service commands need systemd; run the server with `dsv4setup up` instead") from None
    if done.returncode != 0:
        user = current_user()
        raise DsvError(f"no systemd user manager answers for {user}: {(done.stderr or done.stdout).strip()[:300]}",
                       fix=f"log in through a systemd session (XDG_RUNTIME_DIR set), or have root run "
                            f"`loginctl enable-linger {user}` and log in again; or install a system unit: "
                            "`dsv4setup service install --system`")


def journal_command(unit: InstalledUnit) -> str:
    return " ".join(["journalctl", *(["--user"] if unit.scope == "user" else []), "-u", unit.name, "-n", "100"])


def unit_state(unit: InstalledUnit) -> dict[str, str]:
    """ActiveState, SubState, UnitFileState, MainPID, NRestarts, Result of the unit (empty values when unknown)."""
    keys = ("LoadState", "ActiveState", "SubState", "UnitFileState", "MainPID", "NRestarts", "Result")
    done = systemctl(unit, "show", unit.name, "--property=" + ",".join(keys), check=False)
    props = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return {key: props.get(key, "") for key in keys}


def as_int(text: str) -> int | None:
    """A number systemctl show printed ("" or "[not set]" when unknown)."""
    return int(text) if text.isdigit() else None


def current_user() -> str:
    """The name of the real uid, from the password database: never $LOGNAME or $USER, which anyone sets."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())  # no passwd entry: User= and loginctl take the number too


def linger_enabled(user: str) -> bool:
    """Lingering (the user's units start at boot, without a login): logind's marker file."""
    return (LINGER_DIR / user).exists()


def status_summary(workdir: Workdir) -> dict[str, object] | None:
    """The unit's state for `dsv4setup status`: None when no unit is installed."""
    unit = read_installed(workdir)
    if unit is None:
        return None
    state = unit_state(unit)
    return {"unit": unit.name, "scope": unit.scope, "active": state["ActiveState"], "sub": state["SubState"],
            "enabled": state["UnitFileState"], "restarts": as_int(state["NRestarts"])}
