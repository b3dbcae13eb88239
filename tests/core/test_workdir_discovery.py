"""Which workdir a command uses, and why: --workdir, the env var, the one containing the cwd, the last used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4setup.core.workdir import ENV_WORKDIR, Workdir, last_used_file, remember


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(ENV_WORKDIR, raising=False)
    path = tmp_path / "elsewhere"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


def make_workdir(path: Path) -> Path:
    (path / "logs").mkdir(parents=True)
    (path / "dsv4setup.yaml").write_text("profile: cpu-tiny\n")
    return path


def test_order_is_flag_env_cwd_last_used_default(tmp_path: Path, elsewhere: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = make_workdir(tmp_path / "first"), make_workdir(tmp_path / "second")
    assert Workdir.resolve().chosen_by == "the default"
    remember(first)
    assert last_used_file().read_text().strip() == str(first)
    assert (Workdir.resolve().root, Workdir.resolve().chosen_by.startswith("the last one used")) == (first, True)
    monkeypatch.chdir(second / "logs")
    assert Workdir.resolve() == Workdir(second) and Workdir.resolve().chosen_by == "contains the current directory"
    monkeypatch.setenv(ENV_WORKDIR, str(first))
    assert Workdir.resolve().root == first and Workdir.resolve().chosen_by == f"${ENV_WORKDIR}"
    chosen = Workdir.resolve(tmp_path / "third")
    assert chosen.root == tmp_path / "third" and chosen.header.endswith("(--workdir)")


def test_a_last_used_workdir_that_was_removed_is_not_used(tmp_path: Path, elsewhere: Path) -> None:
    remember(tmp_path / "gone")
    assert Workdir.resolve().chosen_by == "the default"


def test_status_shows_which_workdir_and_why_and_accepts_v_after_the_subcommand(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path / "wd")
    env = {k: v for k, v in os.environ.items() if k not in (ENV_WORKDIR, "DSV4SETUP_DEBUG")}
    status = subprocess.run([sys.executable, "-m", "dsv4setup", "status", "-v"], cwd=wd / "logs", env=env,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert status.returncode == 0, status.stderr
    assert f"workdir {wd} (contains the current directory)" in " ".join(status.stdout.split())
    failing = subprocess.run([sys.executable, "-m", "dsv4setup", "logs", "nosuch", "-v"], cwd=wd, env=env,
                             capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert failing.returncode == 2 and "Traceback" in failing.stderr and "no log for step 'nosuch'" in failing.stderr
