"""Remote lint through the local hub: real huggingface_hub, Range reads of the headers only."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dsv4setup.checkpoint.lint import lint
from dsv4setup.checkpoint.meta import read_local
from dsv4setup.checkpoint.remote import read_remote
from dsv4setup.checkpoint.service import lint_doc, parse_target, remote_lint_checks, run_lint
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.hub.access import HubError
from tests.checkpoint.conftest import REPO, TOKEN
from tests.checkpoint.hubserver import HubServer, RepoSpec, free_port

MakeCkpt = Callable[..., Path]
ServeHub = Callable[..., HubServer]
PAD = 8 * 1024 * 1024


def test_remote_lint_fetches_headers_only_and_agrees_with_the_local_lint(make_checkpoint: MakeCkpt,
                                                                          serve_hub: ServeHub) -> None:
    src = make_checkpoint(pad_bytes=PAD)
    hub = serve_hub({REPO: src})
    meta = read_remote(REPO, "main")
    assert meta.commit == hub.commit(REPO)
    remote = lint(meta)
    local = lint(read_local(src))
    assert [(c.id, c.status) for c in remote.checks] == [(c.id, c.status) for c in local.checks]
    assert remote.ok and remote.mtp is not None and remote.mtp.tensor_count == local.mtp.tensor_count  # type: ignore[union-attr]

    shards = sorted(p.name for p in src.glob("*.safetensors"))
    weights = sum((src / n).stat().st_size for n in shards)
    fetched = sum(hub.bytes_served(REPO, n) for n in shards)
    assert fetched < weights / 50, (fetched, weights)
    for name in shards:
        gets = hub.file_requests(REPO, name)
        assert gets and all(r.range is not None and r.range.startswith("bytes=0-") for r in gets), gets
        assert hub.bytes_served(REPO, name) <= 100_001
    assert not any(r.file == "model.safetensors.index.json" and r.range for r in hub.requests)


def test_remote_verdicts_for_stripped_and_undeclared_mtp(make_checkpoint: MakeCkpt, serve_hub: ServeHub) -> None:
    serve_hub({"org/stripped": make_checkpoint("s", mtp="none"),
               "org/undeclared": make_checkpoint("u", declare_mtp=False)})
    stripped = {c.id: c for c in remote_lint_checks("org/stripped", "main")}
    assert stripped["checkpoint.mtp_tensors"].status == "fail"
    undeclared = {c.id: c for c in remote_lint_checks("org/undeclared", "main", area="model")}
    assert undeclared["model.mtp_declared"].status == "fail" and undeclared["model.mtp_declared"].fix


def test_remote_missing_shard_and_pinned_revision(make_checkpoint: MakeCkpt, serve_hub: ServeHub) -> None:
    good = make_checkpoint("good")
    broken = make_checkpoint("broken")
    (broken / "model-00003-of-00003.safetensors").unlink()
    hub = serve_hub({REPO: RepoSpec({"main": broken, "v1": good})})
    checks = {c.id: c.status for c in remote_lint_checks(REPO, "main")}
    assert checks["checkpoint.shards"] == "fail"
    pinned = hub.commit(REPO, "v1")
    outcome = run_lint(parse_target(f"{REPO}@{pinned}"))
    assert outcome.report.ok and outcome.meta.commit == pinned
    doc = lint_doc(outcome)
    validate_document(doc)
    assert doc["source"] == {"kind": "remote", "path": None, "repo": REPO, "revision": pinned, "commit": pinned}


def test_remote_fix_writes_the_corrected_copy_from_the_hub(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                          tmp_path: Path) -> None:
    serve_hub({REPO: make_checkpoint(ignore=["layers.0.ffn.shared_experts.w2", "head"])})
    out = tmp_path / "wd" / "checkpoint-config"
    outcome = run_lint(parse_target(REPO), fix_dir=out)
    assert outcome.fix is not None
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["ignore"] == ["model.layers.0.ffn.shared_experts.down_proj", "lm_head"]
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 0, "eos_token_id": 1}
    validate_document(lint_doc(outcome))


def test_remote_lint_of_a_missing_repo_is_one_failed_check(serve_hub: ServeHub, make_checkpoint: MakeCkpt) -> None:
    serve_hub({REPO: make_checkpoint()})
    checks = remote_lint_checks("org/does-not-exist", "main")
    assert len(checks) == 1 and checks[0].id == "checkpoint.remote" and checks[0].status == "fail"
    assert "not found" in checks[0].summary and "HF_TOKEN" in (checks[0].fix or "")
    bad_rev = remote_lint_checks(REPO, "no-such-branch", area="model")
    assert bad_rev[0].id == "model.remote" and "revision 'no-such-branch' does not exist" in bad_rev[0].summary


def test_remote_lint_of_a_gated_repo_needs_a_token(make_checkpoint: MakeCkpt, serve_hub: ServeHub,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    serve_hub({REPO: RepoSpec({"main": make_checkpoint()}, gated=True)}, tokens={TOKEN: {REPO}})
    with pytest.raises(HubError) as excinfo:
        read_remote(REPO, "main")
    assert "gated" in excinfo.value.message and "accept the terms" in (excinfo.value.fix or "")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert lint(read_remote(REPO, "main")).ok


def test_remote_lint_with_the_hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    checks = remote_lint_checks(REPO, "main")
    assert checks[0].status == "fail" and "cannot reach the Hugging Face hub" in checks[0].summary
    assert "local_path" in (checks[0].fix or "")


def test_hub_server_runs_as_a_process(make_checkpoint: MakeCkpt, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_checkpoint()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("hubserver.py")), "--repo",
                             f"{REPO}=main:{src}", "--gated", REPO, "--token", TOKEN],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("endpoint=http://127.0.0.1:")
        monkeypatch.setenv("HF_ENDPOINT", line.strip().split("=", 1)[1])
        with pytest.raises(HubError, match="gated"):
            read_remote(REPO, "main", token=None)
        assert lint(read_remote(REPO, "main", token=TOKEN)).ok
    finally:
        proc.terminate()
        proc.wait(timeout=10)
