"""Generations of the serving venv: names, the `current` pointer, `--keep`, the upgrade journal's judgement,
a release-2 workdir's plain `venv/` as generation 1, and recovery after a kill -9 while switching.

Pure judgements are tested without I/O; the rest on real folders, real venvs (`python -m venv`), the real
CLI (`dsv4setup generations`, `rollback`) and a real state file shaped as release 2 wrote it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4setup.core.generations import (
    LEGACY_NAME,
    Marker,
    Pointer,
    UpgradeJournal,
    current_name,
    current_venv,
    generation_name,
    is_generation_name,
    ownership_refusal,
    read_pointer,
    recovery,
    to_remove,
    venvs_dir,
    write_marker,
    write_pointer,
)
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.state import load_state, save_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.upgrade import flag_changes, patch_changes, recover

RELEASE_2 = Path(__file__).parents[1] / "core" / "fixtures" / "state-release-2.json"
NOW = "2026-12-07T20:00:00+00:00"


def dsv(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "XDG_STATE_HOME": str(workdir.parent / "xdg-state")}
    env.pop("DSV4SETUP_WORKDIR", None)
    return subprocess.run([sys.executable, "-m", "dsv4setup", *args, "--workdir", str(workdir)], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def release_2_workdir(root: Path) -> Path:
    """A workdir as release 2 left it: state.json (schema state/2) and a real plain venv at `venv/`."""
    root.mkdir(parents=True)
    (root / "state.json").write_text(RELEASE_2.read_text().replace("@WORKDIR@", str(root)))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / LEGACY_NAME)], check=True, timeout=120)
    return root


def make_generation(root: Path, name: str, created_at: str, *, ours: bool = True) -> Path:
    path = venvs_dir(root) / name
    (path / "bin").mkdir(parents=True)
    if ours:
        write_marker(path, Marker(name=name, vllm_version=name.split("-")[0], created_at=created_at,
                                  uid=os.getuid(), complete=True))
    return path


# ---- pure judgements ----

def test_generation_name_is_version_and_input_hash_and_safe_for_a_folder() -> None:
    assert generation_name("0.32.0", "0123456789abcdef") == "0.32.0-01234567"
    assert generation_name("../0.33/rc1", "fedcba9876543210") == "0.33_rc1-fedcba98"
    assert is_generation_name("0.32.0-01234567") and is_generation_name(LEGACY_NAME)
    for bad in ("current", "..", "0.32.0", "0.32.0-0123456G", "a/b-01234567", ".hidden-01234567"):
        assert not is_generation_name(bad), bad


def test_keep_removes_the_oldest_and_never_current_nor_previous() -> None:
    names = ["venv", "0.31.0-aaaaaaaa", "0.32.0-bbbbbbbb", "0.33.0-cccccccc", "0.34.0-dddddddd"]
    # current is the oldest-but-one, previous the oldest: both stay whatever keep says
    assert to_remove(names, "0.31.0-aaaaaaaa", "venv", 0) == ["0.32.0-bbbbbbbb", "0.33.0-cccccccc",
                                                              "0.34.0-dddddddd"]
    assert to_remove(names, "0.34.0-dddddddd", "0.33.0-cccccccc", 1) == ["venv", "0.31.0-aaaaaaaa"]
    assert to_remove(names, "0.34.0-dddddddd", "0.33.0-cccccccc", 5) == []
    with pytest.raises(ValueError):
        to_remove(names, None, None, -1)


def journal(phase: str, from_generation: str | None = "0.31.0-aaaaaaaa") -> UpgradeJournal:
    return UpgradeJournal.model_validate({"phase": phase, "started_at": NOW, "updated_at": NOW, "pid": 1,
                                          "from_generation": from_generation, "to_generation": "0.32.0-bbbbbbbb",
                                          "from_version": "0.31.0", "to_version": "0.32.0"})


@pytest.mark.parametrize(("phase", "alive", "expected"), [
    ("switching", False, "roll-back"),  # killed while switching: back to what served before
    ("building", False, "forget"),  # killed while building: the old generation never stopped being current
    ("built", False, "forget"),
    ("switching", True, "wait"),  # a live run is not ours to touch
    ("done", False, "none"), ("failed", False, "none"), ("interrupted", False, "none"),
])
def test_recovery_after_a_kill_returns_to_a_generation_that_served(phase: str, alive: bool, expected: str) -> None:
    assert recovery(journal(phase), alive) == expected
    assert recovery(None, False) == "none"
    assert recovery(journal("switching", from_generation=None), False) == "forget"


def test_flag_changes_name_the_options_only_in_one_command() -> None:
    old = ["/w/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--port", "8011", "--enforce-eager"]
    new = ["/w/venvs/x/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--port", "8011", "--bogus", "1"]
    assert flag_changes(old, new) == {"removed": ["--enforce-eager"], "added": ["--bogus 1"]}
    assert flag_changes(old, old) == {"removed": [], "added": []}


def test_patch_changes_read_the_shipped_manifest_per_version() -> None:
    rows = {r["id"]: r for r in patch_changes(["mtp-draft-hf-config-path", "mtp-eh-proj-prefix"], "0.32.0", "0.33.0")}
    assert rows["mtp-draft-hf-config-path"] == {"id": "mtp-draft-hf-config-path", "old": "vllm-0.32.diff",
                                                "new": "vllm-0.33.diff"}
    assert rows["mtp-eh-proj-prefix"]["new"] == "upstream"
    assert patch_changes(["mtp-draft-hf-config-path"], "0.32.0", "0.20.0")[0]["new"] is None  # no variant


# ---- the pointer and ownership, on real folders ----

def test_pointer_is_current_and_previous_and_a_broken_one_falls_back_to_the_plain_venv(tmp_path: Path) -> None:
    root = tmp_path / "wd"
    assert current_name(root) is None and current_venv(root) == root / LEGACY_NAME
    write_pointer(root, Pointer("0.32.0-bbbbbbbb", LEGACY_NAME))
    assert read_pointer(root) == Pointer("0.32.0-bbbbbbbb", LEGACY_NAME)
    assert Workdir(root).venv_dir == venvs_dir(root) / "0.32.0-bbbbbbbb"
    assert Workdir(root, building=venvs_dir(root) / "0.33.0-cccccccc").venv_dir == venvs_dir(root) / "0.33.0-cccccccc"
    (venvs_dir(root) / "current").write_text('{"current": "../../etc"}')  # not a generation's name: ignored
    assert read_pointer(root) is None and current_venv(root) == root / LEGACY_NAME
    assert not list(venvs_dir(root).glob(".current.*"))  # the atomic write left no temp file


def test_only_folders_proven_ours_are_generations_to_remove(tmp_path: Path) -> None:
    root = tmp_path / "wd"
    ours = make_generation(root, "0.31.0-aaaaaaaa", NOW)
    foreign = make_generation(root, "0.30.0-99999999", NOW, ours=False)
    misnamed = make_generation(root, "0.29.0-88888888", NOW)
    write_marker(misnamed, Marker(name="0.31.0-aaaaaaaa", created_at=NOW, uid=os.getuid()))
    link = venvs_dir(root) / "0.28.0-77777777"
    link.symlink_to(ours)
    uid = os.getuid()
    assert ownership_refusal(root, ours, uid) is None
    assert "marker" in str(ownership_refusal(root, foreign, uid))
    assert "marker" in str(ownership_refusal(root, misnamed, uid))
    assert "link" in str(ownership_refusal(root, link, uid))
    assert "owned by" in str(ownership_refusal(root, ours, uid + 1))
    assert "venvs/" in str(ownership_refusal(root, tmp_path, uid))


def test_generations_keep_removes_old_ones_of_ours_and_leaves_the_rest(tmp_path: Path) -> None:
    root = release_2_workdir(tmp_path / "wd")
    make_generation(root, "0.30.0-aaaaaaaa", "2026-12-02T00:00:00+00:00")
    make_generation(root, "0.30.5-eeeeeeee", "2026-12-02T12:00:00+00:00", ours=False)
    make_generation(root, "0.31.0-bbbbbbbb", "2026-12-03T00:00:00+00:00")
    make_generation(root, "0.32.0-cccccccc", "2026-12-04T00:00:00+00:00")
    write_pointer(root, Pointer("0.32.0-cccccccc", "0.31.0-bbbbbbbb"))
    result = dsv(root, "generations", "--keep", "0", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate_document(doc)
    assert sorted(Path(p).name for p in doc["removed"]) == ["0.30.0-aaaaaaaa"]
    # the release-2 venv has no marker of ours (nothing adopted it yet), the foreign one neither: left alone
    assert sorted(Path(r["path"]).name for r in doc["refused"]) == ["0.30.5-eeeeeeee", LEGACY_NAME]
    assert (root / LEGACY_NAME / "bin" / "python").exists()
    rows = {r["name"]: r for r in doc["generations"]}
    assert rows["0.32.0-cccccccc"]["current"] and rows["0.31.0-bbbbbbbb"]["previous"]
    assert doc["current"] == "0.32.0-cccccccc"


# ---- a release-2 workdir ----

def test_a_release_2_plain_venv_is_generation_1_where_it_is(tmp_path: Path) -> None:
    root = release_2_workdir(tmp_path / "wd")
    assert Workdir(root).venv_dir == root / LEGACY_NAME  # no pointer: every user of the venv finds it there
    result = dsv(root, "generations", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate_document(doc)
    assert doc["current"] == LEGACY_NAME
    assert [(r["name"], r["current"], r["ours"]) for r in doc["generations"]] == [(LEGACY_NAME, True, False)]
    # rollback from generation 1 has nowhere to go: a clear usage error, and the venv is adopted (our marker,
    # the records that built it) so a later switch can come back to it
    result = dsv(root, "rollback", "--json")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no previous generation" in json.loads(result.stdout)["message"]
    doc = json.loads(dsv(root, "generations", "--json").stdout)
    row = doc["generations"][0]
    assert (row["name"], row["ours"], row["vllm"], row["patches"]["applied"]) == (
        LEGACY_NAME, True, "0.32.0", ["mtp-draft-hf-config-path"])
    assert not (root / "venvs" / "current").exists()  # nothing switched
    assert load_state(root / "state.json").steps["vllm"].outputs["venv"] == str(root / LEGACY_NAME)
    result = dsv(root, "status", "--no-verify", "--json")
    assert result.returncode == 0, result.stderr
    validate_document(json.loads(result.stdout))


def test_a_kill_while_switching_is_rolled_back_by_the_next_up(tmp_path: Path) -> None:
    """The state an upgrade killed mid-switch leaves: the new generation's records and pointer, the journal at
    `switching`, a dead pid. `recover` (the first thing `up` does) puts back the old records, pointer and
    override; `up`'s runbook then starts and smokes the old generation (the e2e in tests/faults does that part)."""
    root = release_2_workdir(tmp_path / "wd")
    state = load_state(root / "state.json")
    old_records = {n: state.steps[n].model_dump(mode="json") for n in ("vllm", "patches")}
    write_marker(root / LEGACY_NAME, Marker(name=LEGACY_NAME, vllm_version="0.32.0", created_at=NOW, uid=os.getuid(),
                                            complete=True, records=old_records))
    make_generation(root, "0.33.0-bbbbbbbb", NOW)
    write_pointer(root, Pointer("0.33.0-bbbbbbbb", LEGACY_NAME))
    state.steps["vllm"].outputs["version"] = "0.33.0"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state.upgrade = journal("switching", from_generation=LEGACY_NAME).model_copy(update={"pid": dead.pid})
    save_state(root / "state.json", state)
    (root / "dsv4setup.yaml").write_text("vllm:\n  version: 0.33.0\n")  # as if the override was written
    message = recover(Workdir(root))
    assert message is not None and LEGACY_NAME in message
    state = load_state(root / "state.json")
    assert state.upgrade is not None and state.upgrade.phase == "interrupted"
    assert state.steps["vllm"].outputs["version"] == "0.32.0"
    assert read_pointer(root) == Pointer(LEGACY_NAME, None)  # as before the upgrade: nothing to roll back to
    assert Workdir(root).venv_dir == root / LEGACY_NAME
    assert "0.33.0" not in (root / "dsv4setup.yaml").read_text()  # no override before the upgrade: none after
    assert recover(Workdir(root)) is None  # closed: nothing more to do



def test_a_vllm_section_becomes_set_items_that_resolve_back_to_it() -> None:
    from dsv4setup.profiles.overrides import parse_set
    from dsv4setup.upgrade import vllm_sets

    section = {"version": "0.32.0", "pip_constraints": ["torch==2.13.0+cpu", "setuptools>=40"]}
    items = vllm_sets(section)
    assert {str(parse_set(i)[0][1]): parse_set(i)[1] for i in items} == section


def test_a_system_unit_is_refused_with_roots_commands_as_service_prints_them() -> None:
    from dsv4setup.core.errors import EXIT_USAGE
    from dsv4setup.upgrade import system_unit_refusal

    commands = ["systemctl disable --now dsv4setup-x.service", "rm -f /etc/systemd/system/dsv4setup-x.service",
                "systemctl daemon-reload"]
    refusal = system_unit_refusal("dsv4setup-x.service", Path("/srv/wd"), "upgrade", commands)
    assert refusal.exit_code == EXIT_USAGE and refusal.reference == "upgrade-system-unit"
    assert "stopped before building anything" in refusal.message and "dsv4setup-x.service" in refusal.message
    assert refusal.fix is not None
    lines = refusal.fix.splitlines()
    assert lines[:4] == ["run as root:", *(f"  {c}" for c in commands)]  # as `service` prints root_commands
    assert "dsv4setup service remove --workdir /srv/wd" in lines[4] and "service install --system" in lines[4]
