"""The download and checkpoint steps through the engine (Runbook.up), real hub client, local hub."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dsv4setup.checkpoint.step import CheckpointStep, config_copy_dir
from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.download.disk import human
from dsv4setup.download.step import DownloadStep
from dsv4setup.download.transfer import WRITE_CHUNK
from dsv4setup.engine import Runbook, Selection
from dsv4setup.profiles.model import ModelSpec, Profile, SpecConfig, VllmSpec
from dsv4setup.profiles.paths import checkpoint_dir
from tests.checkpoint.conftest import REPO, TOKEN
from tests.checkpoint.hubserver import HubServer, RepoSpec

MakeCkpt = Callable[..., Path]
ServeHub = Callable[..., HubServer]


def make_profile(*, vllm: str = "0.33.0", k: int = 1, **model: Any) -> Profile:
    return Profile(name="hub-test", description="in-test profile", source="tests", model=ModelSpec(**model),
                   vllm=VllmSpec(version=vllm), spec=SpecConfig(num_speculative_tokens=k))


def runbook(workdir: Workdir, profile: Profile, **options: Any) -> Runbook:
    return Runbook([DownloadStep(), CheckpointStep()], workdir, profile, options)


def outputs(workdir: Workdir, step: str) -> dict[str, Any]:
    return load_state(workdir.state_file).steps[step].outputs


def test_repo_download_then_lint_then_verified_skip(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                    workdir: Workdir) -> None:
    hub = serve_hub({REPO: make_checkpoint()})
    profile = make_profile(repo=REPO, revision=hub.commit(REPO))
    result = runbook(workdir, profile).up(Selection())
    assert result.ok, result.error
    down = outputs(workdir, "download")
    assert down["path"] == str(checkpoint_dir(profile, workdir)) and down["repo"] == REPO
    assert down["revision"] == hub.commit(REPO) and down["files"] == 7 and down["bytes"] > 0
    lint = outputs(workdir, "checkpoint")
    assert lint["ok"] and lint["hf_config_path"] is None and lint["mtp"]["tensors"] > 20
    assert lint["mtp"]["prefixes"] == ["mtp.0."]

    hub.reset_stats()
    again = runbook(workdir, profile).up(Selection())
    assert [(d.step, d.action) for d in again.decisions] == [("download", "skip"), ("checkpoint", "skip")]
    assert "match their verified sizes" in again.decisions[0].reason
    assert [r for r in hub.requests] == [], "a verified skip needs no network"


def test_deleted_file_is_drift_and_only_it_is_fetched_again(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                            workdir: Workdir) -> None:
    hub = serve_hub({REPO: make_checkpoint()})
    profile = make_profile(repo=REPO)
    assert runbook(workdir, profile).up(Selection()).ok
    (checkpoint_dir(profile, workdir) / "model-00001-of-00003.safetensors").unlink()
    hub.reset_stats()
    result = runbook(workdir, profile).up(Selection())
    assert result.ok
    assert result.decisions[0].action == "run" and "is missing" in result.decisions[0].reason
    assert [r.file for r in hub.file_requests()] == ["model-00001-of-00003.safetensors"]


def test_download_verify_option_rehashes_and_refetches(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                       workdir: Workdir) -> None:
    serve_hub({REPO: make_checkpoint()})
    profile = make_profile(repo=REPO)
    assert runbook(workdir, profile).up(Selection()).ok
    victim = checkpoint_dir(profile, workdir) / "config.json"
    stat = victim.stat()
    victim.write_text(victim.read_text().replace('"hidden_size": 64', '"hidden_size": 65'))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = runbook(workdir, profile, download_verify=True).up(Selection(only=("download",), redo=("download",)))
    assert result.ok
    assert outputs(workdir, "download")["refetched"] == ["config.json"]
    assert '"hidden_size": 64' in victim.read_text()


def test_not_enough_disk_fails_the_step_before_any_byte(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                        workdir: Workdir) -> None:
    hub = serve_hub({REPO: make_checkpoint()})
    result = runbook(workdir, make_profile(repo=REPO), free_space=lambda _p: 1024).up(Selection())
    assert not result.ok and result.failed_step == "download"
    assert result.error is not None and "not enough disk space" in result.error.message
    assert "DSV4SETUP_WORKDIR" in (result.error.fix or "")
    assert hub.file_requests() == [] and not any("/resolve/" in r.path for r in hub.requests)
    assert load_state(workdir.state_file).steps["download"].status == "failed"


def test_gated_repo_error_and_the_token_stays_out_of_logs_and_state(make_checkpoint: MakeCkpt,
                                                                    serve_hub: ServeHub, workdir: Workdir,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    serve_hub({REPO: RepoSpec({"main": make_checkpoint()}, gated=True)}, tokens={TOKEN: {REPO}})
    profile = make_profile(repo=REPO)
    failed = runbook(workdir, profile).up(Selection())
    assert not failed.ok and failed.error is not None and "is gated" in failed.error.message
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = runbook(workdir, profile).up(Selection())
    assert result.ok, result.error
    texts = [workdir.state_file.read_text(), workdir.log_file("download").read_text(),
             workdir.log_file("checkpoint").read_text()]
    assert "token: set" in texts[1]
    assert not any(TOKEN in t for t in texts)


def test_stripped_mtp_stops_up_at_the_checkpoint_step(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                      workdir: Workdir) -> None:
    serve_hub({REPO: make_checkpoint(mtp="none")})
    result = runbook(workdir, make_profile(repo=REPO)).up(Selection())
    assert not result.ok and result.failed_step == "checkpoint"
    assert result.error is not None and "checkpoint.mtp_tensors" in result.error.message
    assert "num_speculative_tokens=0" in (result.error.fix or "")
    log = workdir.log_file("checkpoint").read_text()
    assert "FAIL  checkpoint.mtp_tensors" in log and "PASS  checkpoint.shards" in log
    # Without speculative decoding the same checkpoint is fine.
    ok = runbook(workdir, make_profile(repo=REPO, k=0)).up(Selection())
    assert ok.ok, ok.error


def test_on_disk_ignore_names_give_a_config_copy_and_hf_config_path(make_checkpoint: MakeCkpt,
                                                                    serve_hub: ServeHub, workdir: Workdir) -> None:
    serve_hub({REPO: make_checkpoint(ignore=["layers.0.ffn.shared_experts.w1", "layers.0.ffn.shared_experts.w3"])})
    profile = make_profile(repo=REPO)
    result = runbook(workdir, profile).up(Selection())
    assert result.ok, result.error
    lint = outputs(workdir, "checkpoint")
    copy_dir = config_copy_dir(workdir)
    assert lint["hf_config_path"] == str(copy_dir) and lint["warnings"] == ["checkpoint.quant_ignore"]
    fixed = json.loads((copy_dir / "config.json").read_text())
    assert fixed["quantization_config"]["ignore"] == ["model.layers.0.ffn.shared_experts.gate_up_proj"]
    original = json.loads((checkpoint_dir(profile, workdir) / "config.json").read_text())
    assert original["quantization_config"]["ignore"] == ["layers.0.ffn.shared_experts.w1",
                                                         "layers.0.ffn.shared_experts.w3"]
    # The copy is part of the postcondition: removing it is drift.
    (copy_dir / "config.json").unlink()
    again = runbook(workdir, profile).up(Selection())
    assert again.decisions[1].action == "run" and "config copy" in again.decisions[1].reason
    assert (copy_dir / "config.json").is_file()


def test_local_path_route(make_checkpoint: MakeCkpt, workdir: Workdir, tmp_path: Path) -> None:
    src = make_checkpoint()
    result = runbook(workdir, make_profile(local_path=str(src))).up(Selection())
    assert result.ok, result.error
    down = outputs(workdir, "download")
    assert down["path"] == str(src) and down["route"] == "local" and down["repo"] is None and down["files"] == 7
    missing = runbook(Workdir(tmp_path / "wd2").ensure(), make_profile(local_path=str(tmp_path / "nope"))).up(
        Selection())
    assert not missing.ok and missing.error is not None and "not a directory" in missing.error.message
    assert "model.local_path" in (missing.error.fix or "")


def test_generate_route_builds_the_tiny_model_and_the_lint_passes(workdir: Workdir) -> None:
    profile = make_profile(generate="tiny-deepseek-v3-mtp", vllm="0.32.0")
    result = runbook(workdir, profile).up(Selection())
    assert result.ok, result.error
    down = outputs(workdir, "download")
    assert down["route"] == "generate" and down["path"] == str(workdir.models_dir / "tiny-deepseek-v3-mtp")
    assert (Path(down["path"]) / "model.safetensors").is_file()
    lint = outputs(workdir, "checkpoint")
    assert lint["ok"] and lint["mtp"]["naming"] == "hf" and lint["mtp"]["prefixes"] == ["model.layers.2."]
    again = runbook(workdir, profile).up(Selection())
    assert [d.action for d in again.decisions] == ["skip", "skip"]


def test_hf_cache_mode_through_the_step(make_checkpoint: MakeCkpt, serve_hub: ServeHub, workdir: Workdir,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_hub({REPO: make_checkpoint()})
    monkeypatch.setenv("DSV4SETUP_HF_CACHE", str(tmp_path / "shared-cache"))
    profile = make_profile(repo=REPO)
    result = runbook(workdir, profile).up(Selection())
    assert result.ok, result.error
    down = outputs(workdir, "download")
    assert down["mode"] == "hf-cache" and down["root"].startswith(str(tmp_path / "shared-cache"))
    assert checkpoint_dir(profile, workdir).is_symlink()
    assert outputs(workdir, "checkpoint")["ok"]


def test_a_dropped_connection_is_resumed_and_said_in_the_step_log(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                                 workdir: Workdir,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = make_checkpoint(pad_bytes=12 * 1024 * 1024)
    big = max(src.glob("*.safetensors"), key=lambda p: p.stat().st_size).name
    hub = serve_hub({REPO: src})
    hub.fault(REPO, big, "drop", after_bytes=11 * 1024 * 1024)
    result = runbook(workdir, make_profile(repo=REPO)).up(Selection(only=("download",)))
    assert result.ok, result.error
    log = workdir.log_file("download").read_text()
    assert f"{big}: the connection dropped at {human(WRITE_CHUNK)}, resuming" in log
    assert "download: " in log and "/s," in log  # byte progress with a rate
    assert "resuming" not in capsys.readouterr().err
