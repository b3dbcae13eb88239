"""`--config FILE` in serve.extra_args: vLLM reads the file when it starts, the profile checked it when it
loaded. The serve command names a copy in the workdir of the bytes checked, named by their sha256, so a
change of the user's file in between never reaches vLLM; the next check picks it up, with a new name."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4setup.core.errors import UsageError
from dsv4setup.core.state import State
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.resolve import resolve_profile
from dsv4setup.serve.command import render_serve
from dsv4setup.serve.process import command_fingerprint
from tests.serve.vllm_cpu import ensure_vllm_cpu_venv

CHECKED = b"uvicorn-log-level: warning\n"


def config_arg(argv: list[str]) -> Path:
    return Path(argv[argv.index("--config") + 1])


def sets(*args: str) -> list[str]:
    return [f"serve.extra_args={json.dumps(list(args))}"]


def test_the_server_argv_names_the_copy_checked_at_load_not_the_file_changed_after(
        workdir: Workdir, tmp_path: Path) -> None:
    original = tmp_path / "vllm.yaml"
    original.write_bytes(CHECKED)
    resolved = resolve_profile(workdir, "cpu-tiny", sets("--config", str(original)))
    original.write_text("host: 0.0.0.0\n")  # after the check: would expose the server with no key
    argv = render_serve(resolved.profile, workdir, State()).argv  # the serve step's own command
    copy = config_arg(argv)
    digest = hashlib.sha256(CHECKED).hexdigest()
    assert copy == workdir.root / "config" / f"vllm-config.{digest}.yaml"
    assert copy.read_bytes() == CHECKED and stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert str(original) not in argv and resolved.origins["serve.extra_args"].startswith("--set")

    with pytest.raises(UsageError, match="sets 'host'"):  # the next check sees the change, and refuses it
        resolve_profile(workdir, "cpu-tiny", sets("--config", str(original)))
    changed = b"uvicorn-log-level: debug\n"
    original.write_bytes(changed)
    again = render_serve(resolve_profile(workdir, "cpu-tiny", sets("--config", str(original))).profile, workdir,
                         State())
    assert config_arg(again.argv).name == f"vllm-config.{hashlib.sha256(changed).hexdigest()}.yaml"
    assert config_arg(again.argv).read_bytes() == changed and copy.read_bytes() == CHECKED  # the old one kept
    assert command_fingerprint(again.argv, again.env) != command_fingerprint(argv, {**again.env})


def test_every_spelling_is_pinned_and_a_tampered_copy_is_written_again(workdir: Workdir, tmp_path: Path) -> None:
    original = tmp_path / "vllm.yaml"
    original.write_bytes(CHECKED)
    digest = hashlib.sha256(CHECKED).hexdigest()
    copy = workdir.root / "config" / f"vllm-config.{digest}.yaml"
    inline = resolve_profile(workdir, "cpu-tiny", sets(f"--config={original}")).profile.serve.extra_args
    assert inline == [f"--config={copy}"]
    copy.write_text("host: 0.0.0.0\n")  # the copy changed in the workdir: the next check writes it again
    short = resolve_profile(workdir, "cpu-tiny", sets("--conf", str(original))).profile.serve.extra_args
    assert short == ["--conf", str(copy)] and copy.read_bytes() == CHECKED


def test_the_plan_shows_the_copy_and_its_hash(tmp_path: Path) -> None:
    original = tmp_path / "vllm.yaml"
    original.write_bytes(CHECKED)
    workdir = tmp_path / "wd"
    done = subprocess.run([sys.executable, "-m", "dsv4setup", "plan", "--workdir", str(workdir), "--profile",
                           "cpu-tiny", "--set", sets("--config", str(original))[0], "--json"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr
    argv = json.loads(done.stdout)["serve"]["argv"]
    assert config_arg(argv) == workdir / "config" / f"vllm-config.{hashlib.sha256(CHECKED).hexdigest()}.yaml"


READ_CONFIG = """
import sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
print(make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:]).uvicorn_log_level)
"""


@pytest.mark.slow
def test_vllm_reads_the_checked_copy_after_the_original_changed(test_cache: Path, workdir: Workdir,
                                                                tmp_path: Path) -> None:
    """vLLM-CPU 0.32's own argument parser, which reads --config files, over the serve step's argv."""
    venv = ensure_vllm_cpu_venv(test_cache)
    original = tmp_path / "vllm.yaml"
    original.write_bytes(CHECKED)
    resolved = resolve_profile(workdir, "cpu-tiny", sets("--config", str(original)))
    original.write_text("uvicorn-log-level: debug\n")
    argv = render_serve(resolved.profile, workdir, State()).argv[3:]  # after `python -m <server module>`
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_NO_USAGE_STATS": "1"}
    done = subprocess.run([str(venv / "bin" / "python"), "-c", READ_CONFIG, *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "warning"
