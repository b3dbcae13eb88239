"""`dsv4setup bench` and `dsv4setup bench compare` through the real CLI (a subprocess), JSON against the schemas.

The matrix runs against the stand-in vllm package of tests/bench/standin (a real venv, real server
subprocesses); the runbook is the bench step alone (DSV4SETUP_RUNBOOK), so no serve or smoke record is needed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from dsv4setup.core.errors import EXIT_FAILED, EXIT_USAGE
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.workdir import Workdir

from .conftest import FIXTURES, changed, cli_env, load_rows, standin_profile

REPO = Path(__file__).resolve().parents[2]


def dsv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsv4setup", *args], capture_output=True, text=True, cwd=REPO,
                          env=env or cli_env(), timeout=300, stdin=subprocess.DEVNULL)


def profile_file(tmp_path: Path, **kw: object) -> Path:
    path = tmp_path / "bench-standin.yaml"
    path.write_text(yaml.safe_dump(standin_profile(**kw).document()))
    return path


def test_bench_json_runs_the_matrix_and_prints_one_valid_document(standin_workdir: Workdir, tmp_path: Path) -> None:
    profile = profile_file(tmp_path, k=1, env={"STANDIN_CRASH_K": "2"})
    run = dsv("bench", "--workdir", str(standin_workdir.root), "--profile", str(profile), "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    validate_document(doc)
    assert [(line["k"], line["status"]) for line in doc["summary"]] == [(0, "ok"), (1, "ok"), (2, "failed")]
    assert doc["summary"][2]["known_failure"] == "deepgemm-next-n" and doc["best"]["short"]["k"] == 1
    assert doc["applied"] is None and doc["restore"]["server"] == "stopped"
    assert doc["rows"][0]["fingerprint"]["profile"]["name"] == "bench-standin"
    assert doc["rows"][0]["fingerprint"]["profile"]["overrides"] == {}  # the profile file as given, nothing over it
    for name in ("results", "markdown", "chart", "document"):
        assert Path(doc["files"][name]).is_file()
    assert run.stderr == ""  # --json: no progress bar, no table


def test_bench_on_the_shipped_mix_sends_the_converted_prompts_and_a_bad_file_exits_2(
        standin_workdir: Workdir, tmp_path: Path) -> None:
    profile = profile_file(tmp_path, k=1, env={"STANDIN_FLIP_K": "1"})  # k=1 changes each category's 2nd text
    wd = str(standin_workdir.root)
    run = dsv("bench", "--workdir", wd, "--profile", str(profile), "--k", "0,1", "--dataset", "mix", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    validate_document(doc)
    dataset = doc["matrix"]["dataset"]
    assert dataset["name"] == "mix" and dataset["format"] == "spec_bench" and len(dataset["categories"]) >= 8
    raw = Path(doc["files"]["raw_dir"])
    for category, count in dataset["categories"].items():  # each category its own custom dataset (stand-in read it)
        sent = (raw / f"prompts-{category}.jsonl").read_text().splitlines()
        assert len(sent) == count and all(json.loads(line)["prompt"] for line in sent)
    assert [(r["k"], r["category"]) for r in doc["rows"]] == [
        (k, c) for k in doc["order"] for c in dataset["categories"]]  # one after another against each server
    bench_log = (standin_workdir.logs_dir / "bench.log").read_text()
    assert bench_log.count("launcher.py --dsv4setup-progress") == 2  # one bench process per k for all categories
    for k in (0, 1):
        finished = [json.loads(line) for line in (raw / f"launcher-k{k}-short-c1.jsonl").read_text().splitlines()]
        assert [e["result"] for e in finished] == [f"k{k}-short-c1-{c}.json" for c in dataset["categories"]]
        assert all(e["error"] is None for e in finished)
    reference = json.loads(Path(doc["files"]["lossless_reference"]).read_text())  # k=0's texts for smoke --lossless
    validate_document(reference)
    assert len(reference["prompts"]) == dataset["num_prompts"] and reference["run_id"] == doc["run_id"]
    for row in doc["rows"]:
        workload = row["fingerprint"]["workload"]
        assert row["status"] == "ok" and (workload["dataset"], workload["dataset_sha256"]) == ("mix", dataset["sha256"])
        assert row["metrics"]["completed"] == dataset["categories"][row["category"]]
    markdown = Path(doc["files"]["markdown"]).read_text()
    assert "dataset `mix`" in markdown and "Acceptance by category (rate, mean acceptance length):" in markdown
    assert "| coding | 1 | 75.0%, 1.75 |" in markdown
    flipped = sum(n > 1 for n in dataset["categories"].values())
    assert doc["lossless"]["by_k"] == {"1": {"identical": dataset["num_prompts"] - flipped,
                                             "total": dataset["num_prompts"]}}
    coding = next(c for c in doc["lossless"]["cells"] if c["category"] == "coding")
    second = sent_prompts(raw, "coding")[1]
    assert coding["differing"] == [{"index": 1, "prompt": second[:60], "position": 20,  # standin: 2 chars at 20
                                    "reference": "…answer 1: ok ok ok ok", "candidate": "…answer 1: oknok ok ok"}]
    assert f"- k=1: lossless {dataset['num_prompts'] - flipped}/{dataset['num_prompts']}" in markdown
    assert doc["lossless"]["tolerance"] is None and doc["lossless"]["beyond"] == []  # unmeasured: reported only
    strict = dsv("bench", "--workdir", wd, "--profile", str(profile), "--k", "0,1", "--dataset", "mix", "--set",
                 "bench.lossless_tolerance=0", "--json")
    assert strict.returncode == EXIT_FAILED, strict.stderr
    failed = json.loads(strict.stdout)
    assert failed["ok"] is False and failed["lossless"]["beyond"] == [1]
    assert any(p.startswith(f"k=1 changed the greedy output of {flipped} of ") for p in failed["problems"])
    shared = dsv("bench", "report", "--share", "--workdir", wd)
    assert shared.returncode == 0, shared.stderr
    assert "| short | 1 | coding | 100.0 tok/s | 110.0 tok/s, accept 75.0%, length 1.75 |" in shared.stdout
    assert wd not in shared.stdout and str(tmp_path) not in shared.stdout and "/" + "tmp/" not in shared.stdout
    assert socket.gethostname() not in shared.stdout
    assert dsv("bench", "report", "--workdir", wd).stdout == Path(doc["files"]["markdown"]).read_text()
    weighed = dsv("bench", "--workdir", wd, "--profile", str(profile), "--k", "0,1", "--dataset", "mix",
                  "--weights", "nope=2", "--json")
    assert weighed.returncode == EXIT_USAGE and "no category 'nope'" in json.loads(weighed.stdout)["message"]
    bad = tmp_path / "prompts.txt"
    bad.write_text("not a prompt file\n")
    refused = dsv("bench", "--workdir", wd, "--profile", str(profile), "--dataset", str(bad), "--json")
    assert refused.returncode == EXIT_USAGE
    assert "--dataset prompts.txt: not ShareGPT JSON" in json.loads(refused.stdout)["message"]


def test_one_category_that_fails_inside_the_shared_bench_process_fails_alone_and_the_others_are_measured(
        standin_workdir: Workdir, tmp_path: Path) -> None:
    profile = profile_file(tmp_path, k=1, env={"STANDIN_FAIL_RESULT": "k1-short-c1-coding.json"})
    run = dsv("bench", "--workdir", str(standin_workdir.root), "--profile", str(profile), "--k", "1", "--dataset",
              "mix", "--json")
    assert run.returncode == 0, run.stderr  # the other categories succeeded
    doc = json.loads(run.stdout)
    validate_document(doc)
    status = {r["category"]: r["status"] for r in doc["rows"]}
    assert status.pop("coding") == "failed" and set(status.values()) == {"ok"} and len(status) >= 7
    coding = next(r for r in doc["rows"] if r["category"] == "coding")
    assert coding["error"]["message"] == "vllm bench serve failed: RuntimeError: standin: this run fails on purpose"
    assert all(r["elapsed_s"] >= 0 and r["started_at"] for r in doc["rows"])


def sent_prompts(raw: Path, category: str) -> list[str]:
    return [json.loads(line)["prompt"] for line in (raw / f"prompts-{category}.jsonl").read_text().splitlines()]


def test_bench_prints_a_table_and_apply_best_changes_the_plan(standin_workdir: Workdir, tmp_path: Path) -> None:
    profile = profile_file(tmp_path, k=1)
    wd = str(standin_workdir.root)
    run = dsv("bench", "--workdir", wd, "--profile", str(profile), "--k", "0,2", "--apply-best")
    assert run.returncode == 0, run.stderr
    assert "✓ k=2 short c=1: 120.0 tok/s, acceptance 75.0%" in run.stderr  # a line per cell above the bar
    assert "shape short: 16 in / 32 out, 4 prompts" in run.stdout and "1.20x" in run.stdout
    assert "best k for short: 2" in run.stdout and "applied: spec.num_speculative_tokens = 2 (was 1)" in run.stdout
    assert "server: no server ran before the bench" in run.stdout
    overrides = yaml.safe_load(standin_workdir.overrides_file.read_text())
    assert overrides["spec"]["num_speculative_tokens"] == 2
    assert overrides["evidence"]["spec.num_speculative_tokens"]["scores"] == {"0": 100.0, "2": 120.0}
    plan = dsv("plan", "--workdir", wd, "--profile", str(profile), "--json")
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    validate_document(doc)
    argv = doc["serve"]["argv"]
    assert json.loads(argv[argv.index("--speculative-config") + 1])["num_speculative_tokens"] == 2
    assert doc["origins"]["spec.num_speculative_tokens"].startswith("workdir:")


def test_bad_matrix_flags_exit_2_with_a_json_error_and_touch_nothing(standin_workdir: Workdir, tmp_path: Path) -> None:
    profile = profile_file(tmp_path)
    for flags, words in ((["--shape", "long"], "no such bench shape"), (["--k", "1,x"], "not a whole number")):
        run = dsv("bench", "--workdir", str(standin_workdir.root), "--profile", str(profile), *flags, "--json")
        assert run.returncode == EXIT_USAGE, run.stderr
        doc = json.loads(run.stdout)
        validate_document(doc)
        assert doc["schema"] == "dsv4setup.error/2" and words in doc["message"]
    assert not standin_workdir.bench_dir.exists()


def test_a_matrix_where_nothing_succeeds_exits_1_with_its_document(standin_workdir: Workdir, tmp_path: Path) -> None:
    profile = profile_file(tmp_path, env={"STANDIN_CRASH_K": "0"})
    run = dsv("bench", "--workdir", str(standin_workdir.root), "--profile", str(profile), "--k", "0", "--json")
    assert run.returncode == EXIT_FAILED
    doc = json.loads(run.stdout)
    validate_document(doc)
    assert not doc["ok"] and doc["problems"] == ["no cell of the matrix succeeded"]
    assert doc["rows"][0]["error"]["known_failure"] == "deepgemm-next-n"


def test_compare_flags_setups_that_differ_in_anything_but_hardware(tmp_path: Path) -> None:
    rows = load_rows("cpu-tiny-results.jsonl")
    a = FIXTURES / "cpu-tiny-results.jsonl"
    b = tmp_path / "b.jsonl"
    other = [changed(changed(r, "hardware.gpus", [{"name": "NVIDIA H200", "sm": "9.0"}]), "vllm.version", "0.33.0")
             for r in rows]
    b.write_text("".join(json.dumps(r) + "\n" for r in other))
    run = dsv("bench", "compare", str(a), str(b), "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    validate_document(doc)
    assert doc["counts"]["mismatched"] == 3 and doc["differing_keys"] == ["vllm.version"]
    human = dsv("bench", "compare", str(a), str(b))
    assert human.returncode == 0, human.stderr
    assert "differs: vllm.version" in human.stdout and "vllm.version: A='0.32.0' B='0.33.0'" in human.stdout
    assert "0 of 3 cells matched, 3 measured with different setups" in human.stdout
    same = dsv("bench", "compare", str(a), str(a))
    assert "3 of 3 cells matched" in same.stdout
    missing = dsv("bench", "compare", str(a), str(tmp_path / "nope.jsonl"), "--json")
    assert missing.returncode == EXIT_USAGE and "does not exist" in json.loads(missing.stdout)["message"]


def test_compare_refuses_rows_on_different_prompts_with_exit_2_unless_allowed(tmp_path: Path) -> None:
    rows = load_rows("cpu-tiny-results.jsonl")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in rows))
    b.write_text("".join(json.dumps(changed(changed(r, "workload.dataset", "mix"), "workload.dataset_sha256", "c" * 64))
                         + "\n" for r in rows))
    refused = dsv("bench", "compare", str(a), str(b), "--json")
    assert refused.returncode == EXIT_USAGE and "on different prompts" in json.loads(refused.stdout)["message"]
    allowed = dsv("bench", "compare", str(a), str(b), "--allow-different-prompts", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert "workload.dataset_sha256" in json.loads(allowed.stdout)["differing_keys"]


def test_compare_reads_rows_of_the_first_release_that_listed_every_diff_of_a_patch(tmp_path: Path) -> None:
    """First-release rows carry a list of diff hashes per patch (bug #20): compare reads them, no crash."""
    one, two = "a" * 64, "b" * 64
    rows = [{**r, "schema": "dsv4setup.bench-row/1"} for r in load_rows("cpu-tiny-results.jsonl")]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(changed(r, "patches.diff_sha256", {"mtp-draft-hf-config-path": [one, two]}))
                         + "\n" for r in rows))
    b.write_text("".join(json.dumps(changed(r, "patches.diff_sha256", {"mtp-draft-hf-config-path": [one]}))
                         + "\n" for r in rows))
    run = dsv("bench", "compare", str(a), str(b), "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    validate_document(doc)
    # several hashes: which one ran is unknown (null); one hash: that one. So the rows differ there, honestly.
    assert doc["differing_keys"] == ["patches.diff_sha256.mtp-draft-hf-config-path"]
