"""`doctor --bandwidth` and the download's expected time in `plan` (issue #28).

The measurement runs the real huggingface_hub client against the local hub server
(tests/checkpoint/hubserver.py); the CLI runs in-process through dsv4setup.cli.main.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from dsv4setup.cli import main
from dsv4setup.download import bandwidth
from dsv4setup.download.bandwidth import Bandwidth, download_estimate
from dsv4setup.hub.access import HubError
from dsv4setup.profiles.model import ModelSpec
from tests.checkpoint.conftest import REPO, TOKEN
from tests.checkpoint.hubserver import HubServer, Pacer, RepoSpec
from tests.cli_docs import run_cli

ServeHub = Callable[..., HubServer]
WEIGHTS = "model-00001-of-00002.safetensors"


def repo_dir(tmp_path: Path) -> Path:
    """A repo whose largest file is a 3 MB shard (random bytes: the timing reads, it does not parse)."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "deepseek_v3"}')
    (root / WEIGHTS).write_bytes(os.urandom(3_000_000))
    (root / "model-00002-of-00002.safetensors").write_bytes(os.urandom(1_000_000))
    (root / "notes.bin").write_bytes(os.urandom(5_000_000))  # larger, but outside the allow patterns
    return root


def measured(rate: float = 100e6, endpoint: str = "http://hub", repo: str = "org/name",
             patterns: list[str] | None = None) -> Bandwidth:
    return Bandwidth(endpoint, repo, "a" * 40, patterns if patterns is not None else ModelSpec().allow_patterns,
                     WEIGHTS, 256_000_000, 2.56, rate, 150_000_000_000, "2026-12-07T20:00:00+00:00")


# --- the measurement, through the download's client --------------------------------------------------------
def test_measure_times_a_ranged_get_of_the_largest_fetched_file(serve_hub: ServeHub, tmp_path: Path) -> None:
    hub = serve_hub({REPO: RepoSpec({"main": repo_dir(tmp_path)}, gated=True)}, tokens={TOKEN: {REPO}})
    result = bandwidth.measure(REPO, "main", ModelSpec().allow_patterns, TOKEN, probe_bytes=1_000_000)
    assert (result.file, result.bytes, result.repo) == (WEIGHTS, 1_000_000, REPO)
    assert result.revision == hub.commit(REPO) and result.endpoint == hub.endpoint
    assert result.checkpoint_bytes == 4_000_000 + len('{"model_type": "deepseek_v3"}')
    assert result.rate_bps == pytest.approx(result.bytes / result.seconds, rel=0.01)
    gets = hub.file_requests(REPO, WEIGHTS)
    assert [r.range for r in gets] == ["bytes=0-999999"] and gets[0].body_bytes == 1_000_000
    assert [r.server for r in gets] == ["cdn"] and not gets[0].authorized  # the token stays with the hub
    assert TOKEN not in json.dumps(result.to_dict())


def test_measure_is_capped_at_the_file_size(serve_hub: ServeHub, tmp_path: Path) -> None:
    serve_hub({REPO: repo_dir(tmp_path)})
    result = bandwidth.measure(REPO, "main", ModelSpec().allow_patterns, None, probe_bytes=256_000_000)
    assert (result.file, result.bytes) == (WEIGHTS, 3_000_000)


def test_a_refused_token_is_the_hubs_error_and_a_failed_finding(serve_hub: ServeHub, tmp_path: Path) -> None:
    serve_hub({REPO: RepoSpec({"main": repo_dir(tmp_path)}, gated=True)}, tokens={TOKEN: {REPO}})
    with pytest.raises(HubError) as info:
        bandwidth.measure(REPO, "main", None, None, probe_bytes=1000)
    found = bandwidth.finding(info.value)
    assert (found.id, found.status) == ("host.bandwidth", "fail") and "gated" in found.summary
    assert found.fix and "HF_TOKEN" in found.fix


# --- the CLI: doctor measures and keeps it, plan uses it ---------------------------------------------------
def workdir_for(tmp_path: Path, hub: HubServer) -> Path:
    wd = tmp_path / "wd"
    wd.mkdir()
    overrides = {"profile": "cpu-tiny", "model": {"repo": REPO, "revision": hub.commit(REPO), "generate": None}}
    (wd / "dsv4setup.yaml").write_text(yaml.safe_dump(overrides))
    return wd


def test_doctor_bandwidth_keeps_the_rate_and_plan_uses_it(serve_hub: ServeHub, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    hub = serve_hub({REPO: RepoSpec({"main": repo_dir(tmp_path)}, gated=True)}, tokens={TOKEN: {REPO}})
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    wd = workdir_for(tmp_path, hub)
    code, plan = run_cli(capsys, "plan", "--workdir", str(wd), "--json")
    assert code == 0 and plan["download"]["basis"] == "profile" and plan["download"]["expected_s"] == 2
    assert "doctor --bandwidth" in plan["download"]["text"]

    code, doc = run_cli(capsys, "doctor", "--workdir", str(wd), "--profile", "cpu-tiny", "--bandwidth",
                        "--bandwidth-mb", "2", "--json")
    checks = {c["id"]: c for c in doc["checks"]}
    assert checks["host.bandwidth"]["status"] == "pass", checks["host.bandwidth"]
    assert code == (0 if doc["ok"] else 1)
    link = doc["bandwidth"]
    assert doc["schema"] == "dsv4setup.doctor/3" and (link["repo"], link["file"], link["bytes"]) == (
        REPO, WEIGHTS, 2_000_000)
    kept = (wd / bandwidth.BANDWIDTH_FILE).read_text()
    assert json.loads(kept)["rate_bps"] == link["rate_bps"] and TOKEN not in kept

    code, plan = run_cli(capsys, "plan", "--workdir", str(wd), "--json")
    download = plan["download"]
    assert code == 0 and plan["schema"] == "dsv4setup.plan/3"
    assert download["basis"] == "measured" and download["rate_bps"] == link["rate_bps"]
    assert download["bytes"] == link["checkpoint_bytes"]
    assert download["expected_s"] == max(1, round(link["checkpoint_bytes"] / link["rate_bps"]))
    assert "measured by `dsv4setup doctor --bandwidth`" in download["text"]
    with pytest.raises(SystemExit) as info:
        main(["plan", "--workdir", str(wd)])
    assert info.value.code in (0, None) and download["text"] in " ".join(capsys.readouterr().out.split())


def test_doctor_bandwidth_failure_is_a_failed_check_without_the_token(serve_hub: ServeHub, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    hub = serve_hub({REPO: RepoSpec({"main": repo_dir(tmp_path)}, gated=True)}, tokens={TOKEN: {REPO}})
    bad = "hf_not_a_valid_token_987654321"
    monkeypatch.setenv("HF_TOKEN", bad)
    wd = workdir_for(tmp_path, hub)
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--workdir", str(wd), "--profile", "cpu-tiny", "--bandwidth", "--json"])
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    found = {c["id"]: c for c in doc["checks"]}["host.bandwidth"]
    assert info.value.code == 1 and found["status"] == "fail" and "token" in found["summary"]
    assert doc["bandwidth"] is None and not (wd / bandwidth.BANDWIDTH_FILE).exists()
    assert bad not in captured.out + captured.err


def test_doctor_bandwidth_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wd = str(tmp_path / "wd")
    code, doc = run_cli(capsys, "doctor", "--workdir", wd, "--bandwidth-mb", "5", "--json")
    assert code == 2 and "--bandwidth-mb goes with --bandwidth" in doc["message"]
    code, doc = run_cli(capsys, "doctor", "--workdir", wd, "--bandwidth", "--snapshot", str(tmp_path / "s.json"),
                        "--json")
    assert code == 2 and "--snapshot" in doc["message"]


def test_doctor_bandwidth_skips_a_profile_without_a_repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_cli(capsys, "doctor", "--workdir", str(tmp_path / "wd"), "--profile", "cpu-tiny", "--bandwidth",
                        "--json")
    found = {c["id"]: c for c in doc["checks"]}["host.bandwidth"]
    assert found["status"] == "skip" and "--model" in found["summary"] and doc["bandwidth"] is None


# --- the estimate (pure) -------------------------------------------------------------------------------------
def test_the_estimate_uses_the_measured_rate_for_the_same_endpoint() -> None:
    model = ModelSpec(repo="org/name", expected_size_gb=160)
    estimate = download_estimate(model, 3600, measured(rate=100e6), "http://hub")
    assert (estimate["basis"], estimate["expected_s"], estimate["bytes"]) == ("measured", 1500, 150_000_000_000)
    assert "~25 min for 150.0 GB at 100.0 MB/s, measured" in str(estimate["text"])
    other_repo = download_estimate(model, 3600, measured(rate=100e6, repo="org/other"), "http://hub")
    assert (other_repo["basis"], other_repo["expected_s"]) == ("measured", 1600)  # the profile's size, our rate


def test_the_estimate_falls_back_to_the_profile_and_says_why() -> None:
    model = ModelSpec(repo="org/name", expected_size_gb=150)
    estimate = download_estimate(model, 3600, measured(endpoint="http://mirror"), "http://hub")
    assert (estimate["basis"], estimate["expected_s"], estimate["rate_bps"]) == ("profile", 3600, 150e9 / 3600)
    assert "measured to http://mirror, not http://hub" in str(estimate["text"])
    assert download_estimate(model, 3600, None, "http://hub")["text"] == (
        "download: ~60 min for 150.0 GB: the profile's expected_s (~41.7 MB/s assumed); "
        "`dsv4setup doctor --bandwidth` measures this machine's link")
    assert download_estimate(ModelSpec(repo="org/name"), None, None, "http://hub")["basis"] == "unknown"
    generated = download_estimate(ModelSpec(generate="tiny-deepseek-v3-mtp"), 2, measured(), "http://hub")
    assert generated["basis"] == "profile" and "nothing to fetch" in str(generated["text"])


def test_a_kept_measurement_reads_back_and_a_foreign_file_is_ignored(tmp_path: Path) -> None:
    result = measured()
    bandwidth.save(tmp_path, result)
    assert bandwidth.load(tmp_path) == result
    (tmp_path / bandwidth.BANDWIDTH_FILE).write_text('{"schema": "other/1"}')
    assert bandwidth.load(tmp_path) is None
    (tmp_path / bandwidth.BANDWIDTH_FILE).write_text("not json")
    assert bandwidth.load(tmp_path) is None


# --- the test hub's link (the benchmark's throttle) -----------------------------------------------------------
def test_the_hub_pacer_is_one_link_shared_by_every_transfer() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = Pacer(1000.0, clock=lambda: now[0], sleep=sleep)
    pacer.take(500)  # half a second of the link
    pacer.take(1500)  # queued behind it: done 2 s after the start
    assert slept == [0.5, 2.0]
    now[0] = 110.0  # idle since: no debt carried over
    pacer.take(100)
    assert slept[-1] == pytest.approx(0.1)
    Pacer(None, sleep=sleep).take(10**9)
    assert len(slept) == 3
    with pytest.raises(ValueError):
        Pacer(0)
