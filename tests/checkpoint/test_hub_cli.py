"""`dsv4setup download` and `dsv4setup checkpoint lint`: exit codes, JSON against the schemas.

Most run in-process through dsv4setup.cli.main; the kill-and-resume one runs the real command
in a subprocess (HF_ENDPOINT read at import, as for a user).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dsv4setup.cli import main
from dsv4setup.core.jsonschemas import validate_document
from tests.checkpoint.conftest import REPO, TOKEN
from tests.checkpoint.hubserver import HubServer, RepoSpec

MakeCkpt = Callable[..., Path]
ServeHub = Callable[..., HubServer]
ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any] | None, str, str]:
    with pytest.raises(SystemExit) as excinfo:
        main(list(args))
    captured = capsys.readouterr()
    doc = json.loads(captured.out) if "--json" in args else None
    if doc is not None:
        validate_document(doc)
    return int(excinfo.value.code or 0), doc, captured.out, captured.err


def workdir_for(tmp_path: Path, hub: HubServer, **model: Any) -> Path:
    wd = tmp_path / "wd"
    wd.mkdir(parents=True, exist_ok=True)
    overrides = {"profile": "cpu-tiny", "model": {"repo": REPO, "revision": hub.commit(REPO), "generate": None,
                                                  **model}}
    (wd / "dsv4setup.yaml").write_text(yaml.safe_dump(overrides))
    return wd


def test_lint_local_json_and_exit_codes(make_checkpoint: MakeCkpt, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    code, doc, _, _ = run_cli(capsys, "checkpoint", "lint", str(make_checkpoint("good")), "--json")
    assert code == 0 and doc is not None and doc["ok"] and doc["source"]["kind"] == "local"
    assert doc["mtp"]["declared"] == 1 and doc["fix"] is None and doc["vllm_version"] == "0.33.0"
    code, doc, _, _ = run_cli(capsys, "checkpoint", "lint", str(make_checkpoint("bad", mtp="none")), "--json")
    assert code == 1 and doc is not None and not doc["ok"]
    assert {c["id"]: c["status"] for c in doc["checks"]}["checkpoint.mtp_tensors"] == "fail"
    code, doc, _, _ = run_cli(capsys, "checkpoint", "lint", str(tmp_path / "nope"), "--json")
    assert code == 2 and doc is not None and doc["schema"] == "dsv4setup.error/2"
    (tmp_path / "notes.txt").write_text("not a model")
    code, doc, _, _ = run_cli(capsys, "checkpoint", "lint", str(tmp_path), "--json")
    assert code == 2 and doc is not None and doc["message"] == (
        f"{tmp_path} is not a checkpoint: it has no config.json and no *.safetensors files")
    assert "download --verify" not in (doc["fix"] or "")


def test_lint_fix_writes_the_copy_into_the_workdir(make_checkpoint: MakeCkpt, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    src = make_checkpoint(ignore=["layers.1.ffn.shared_experts.w2"])
    original = (src / "config.json").read_bytes()
    wd = tmp_path / "wd"
    code, doc, _, _ = run_cli(capsys, "checkpoint", "lint", str(src), "--fix", "--workdir", str(wd), "--json")
    assert code == 0 and doc is not None and doc["fix"]["hf_config_path"] == str(wd / "checkpoint-config")
    assert json.loads((wd / "checkpoint-config" / "config.json").read_text())["quantization_config"]["ignore"] == [
        "model.layers.1.ffn.shared_experts.down_proj"]
    assert (src / "config.json").read_bytes() == original
    code, _, out, err = run_cli(capsys, "checkpoint", "lint", str(src), "--fix", "--workdir", str(wd))
    assert code == 0 and "checkpoint.quant_ignore" in out and "corrected config written" in err


def test_lint_remote_repo_at_revision(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = make_checkpoint(pad_bytes=4 * MB)
    hub = serve_hub({REPO: src})
    commit = hub.commit(REPO)
    code, doc, _, _ = run_cli(capsys, "checkpoint", "lint", f"{REPO}@{commit}", "--json")
    assert code == 0 and doc is not None and doc["source"]["commit"] == commit
    weights = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    assert sum(hub.bytes_served(REPO, p.name) for p in src.glob("*.safetensors")) < weights / 20
    code, _, out, _ = run_cli(capsys, "checkpoint", "lint", f"{REPO}@{commit}", "--vllm-version", "0.32.0")
    assert code == 1 and "checkpoint.mtp_dtypes" in out


def test_download_json_skip_and_verify(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                       capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    hub = serve_hub({REPO: make_checkpoint()})
    wd = workdir_for(tmp_path, hub)
    code, doc, _, _ = run_cli(capsys, "download", "--workdir", str(wd), "--json")
    assert code == 0 and doc is not None and doc["ok"] and doc["action"] == "run" and doc["profile"] == "cpu-tiny"
    out = doc["outputs"]
    assert out["repo"] == REPO and out["revision"] == hub.commit(REPO) and out["files"] == 7
    assert Path(out["path"]) == wd / "models" / REPO.replace("/", "--")
    code, doc, _, _ = run_cli(capsys, "download", "--workdir", str(wd), "--json")
    assert code == 0 and doc is not None and doc["action"] == "skip" and doc["outputs"]["files"] == 7

    shard = Path(out["path"]) / "model-00003-of-00003.safetensors"
    stat = shard.stat()
    shard.write_bytes(shard.read_bytes()[::-1])
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, doc, _, _ = run_cli(capsys, "download", "--workdir", str(wd), "--verify", "--json")
    assert code == 0 and doc is not None and doc["outputs"]["refetched"] == [shard.name]
    code, _, out_text, _ = run_cli(capsys, "download", "--workdir", str(wd))
    assert code == 0 and REPO in out_text and "sha256" in out_text


def test_download_gated_error_json_never_shows_the_token(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                         capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    other = "hf_no_access_token_987654321"
    hub = serve_hub({REPO: RepoSpec({"main": make_checkpoint()}, gated=True)}, tokens={TOKEN: {REPO}, other: set()})
    wd = workdir_for(tmp_path, hub)
    code, doc, _, _ = run_cli(capsys, "download", "--workdir", str(wd), "--json")
    assert code == 1 and doc is not None and not doc["ok"] and doc["outputs"] is None
    assert "is gated" in doc["error"]["message"] and "HF_TOKEN" in doc["error"]["fix"]
    monkeypatch.setenv("HF_TOKEN", other)
    code, doc, out, err = run_cli(capsys, "download", "--workdir", str(wd), "--json")
    assert code == 1 and doc is not None and "authorized list" in doc["error"]["message"]
    assert other not in out + err + (wd / "logs" / "download.log").read_text() + (wd / "state.json").read_text()


def test_killed_download_command_resumes(make_checkpoint: MakeCkpt, serve_hub: ServeHub, tmp_path: Path) -> None:
    src = make_checkpoint(pad_bytes=24 * MB)
    big = max(src.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    hub = serve_hub({REPO: src})
    hub.fault(REPO, big.name, "stall", after_bytes=11 * MB)
    wd = workdir_for(tmp_path, hub)
    env = {**os.environ, "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "dsv4setup", "download", "--workdir", str(wd), "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    part = wd / "models" / f".{REPO.replace('/', '--')}.partial" / f"{hub.file_info(REPO, big.name).sha256}.part"
    try:
        hub.wait_for_bytes(REPO, big.name, 11 * MB)
        deadline = time.monotonic() + 20  # huggingface_hub writes 10 MB chunks: wait for the first one
        while time.monotonic() < deadline and not (part.is_file() and part.stat().st_size >= 10 * MB):
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    hub.clear_faults()
    assert part.stat().st_size == 10 * MB
    status = subprocess.run([sys.executable, "-m", "dsv4setup", "status", "--workdir", str(wd), "--json"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    rows = {r["step"]: r for r in json.loads(status.stdout)["steps"]}
    assert rows["download"]["status"] == "interrupted"
    hub.reset_stats()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    validate_document(doc)
    assert doc["ok"] and doc["outputs"]["fetched_bytes"] < doc["outputs"]["bytes"]
    [get] = hub.file_requests(REPO, big.name)
    assert get.range == "bytes=10485760-" and get.body_bytes < big.stat().st_size
    assert (Path(doc["outputs"]["path"]) / big.name).read_bytes() == big.read_bytes()
