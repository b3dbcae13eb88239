"""Lint verdicts over real safetensors files (headers read locally, 8 bytes + JSON per shard)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dsv4setup.checkpoint.fix import FIX_NOTE, local_reader, read_fix_note, write_config_copy
from dsv4setup.checkpoint.lint import LintReport, lint
from dsv4setup.checkpoint.meta import read_local, read_local_header
from dsv4setup.checkpoint.names import ignore_fixes, runtime_name
from dsv4setup.checkpoint.rules import load_rules, version_tuple
from dsv4setup.checkpoint.service import parse_target
from dsv4setup.core.errors import UsageError
from dsv4setup.tinymodel import generate_tiny_checkpoint
from tests.checkpoint.ckptgen import save_shard

MakeCkpt = Callable[..., Path]


def statuses(report: LintReport) -> dict[str, str]:
    return {c.id: c.status for c in report.checks}


def check(report: LintReport, check_id: str):  # noqa: ANN201 - Check
    return next(c for c in report.checks if c.id == check_id)


def test_bf16_mtp_block_passes_every_check(make_checkpoint: MakeCkpt) -> None:
    report = lint(read_local(make_checkpoint(mtp="bf16")))
    assert report.ok
    assert set(statuses(report).values()) == {"pass"}
    assert report.mtp is not None and report.mtp.naming == "native"
    assert report.mtp.declared == 1 and sorted(report.mtp.layers) == [0]
    assert report.mtp.tensor_count == len([n for n in report.mtp.layers[0].tensors if n.startswith("mtp.0.")]) > 20
    head = check(report, "checkpoint.mtp_head").summary
    assert "shared with the target's head.weight" in head and "shared with the target's embed.weight" in head
    dtypes = check(report, "checkpoint.mtp_dtypes").summary
    assert "BF16" in dtypes and "dtype-gated BF16 O-proj path" in dtypes


def test_bf16_wo_a_fails_against_a_vllm_without_the_bf16_o_proj_path(make_checkpoint: MakeCkpt) -> None:
    report = lint(read_local(make_checkpoint(mtp="bf16")), vllm_version="0.32.0")
    dtypes = check(report, "checkpoint.mtp_dtypes")
    assert dtypes.status == "fail"
    assert "mtp.0.attn.wo_a" in dtypes.summary and "#44847" in (dtypes.fix or "")


def test_fp8_and_mixed_mtp_blocks_report_their_dtypes_and_scales(make_checkpoint: MakeCkpt) -> None:
    fp8 = lint(read_local(make_checkpoint("fp8", mtp="fp8")))
    assert fp8.ok
    assert "F8_E4M3+scale" in check(fp8, "checkpoint.mtp_dtypes").summary
    mixed = lint(read_local(make_checkpoint("mixed", mtp="mixed")))
    summary = check(mixed, "checkpoint.mtp_dtypes").summary
    assert mixed.ok and "F8_E4M3+weight_scale" in summary and "I32+weight_scale" in summary
    old = lint(read_local(make_checkpoint("mixed-old", mtp="mixed")), vllm_version="0.31.2")
    assert check(old, "checkpoint.mtp_dtypes").status == "fail"
    assert "scale-name fallback" in check(old, "checkpoint.mtp_dtypes").summary


def test_mtp_declared_but_stripped_fails(make_checkpoint: MakeCkpt) -> None:
    report = lint(read_local(make_checkpoint(mtp="none", declare_mtp=True)))
    assert not report.ok
    tensors = check(report, "checkpoint.mtp_tensors")
    assert tensors.status == "fail" and "absent" in tensors.summary and "no-op" in tensors.summary
    assert statuses(report)["checkpoint.mtp_declared"] == "pass"
    assert statuses(report)["checkpoint.mtp_head"] == "skip"


def test_mtp_tensors_without_declaration_fail(make_checkpoint: MakeCkpt) -> None:
    report = lint(read_local(make_checkpoint(declare_mtp=False)))
    assert statuses(report)["checkpoint.mtp_declared"] == "fail"
    tensors = check(report, "checkpoint.mtp_tensors")
    assert tensors.status == "fail" and "declares no MTP layer" in tensors.summary
    assert "num_nextn_predict_layers: 1" in (tensors.fix or "")


def test_missing_mtp_is_only_a_warning_when_the_profile_does_not_use_mtp(make_checkpoint: MakeCkpt) -> None:
    report = lint(read_local(make_checkpoint(mtp="none")), expect_mtp=False)
    assert report.ok
    assert statuses(report)["checkpoint.mtp_tensors"] == "warn"


def test_mtp_file_left_out_of_the_index_is_reported_as_never_loaded(make_checkpoint: MakeCkpt) -> None:
    report = lint(read_local(make_checkpoint(mtp_file="model-mtp.safetensors", mtp_file_indexed=False)))
    tensors = check(report, "checkpoint.mtp_tensors")
    assert tensors.status == "fail" and "model-mtp.safetensors" in tensors.summary
    assert "never loads them" in tensors.summary
    assert statuses(report)["checkpoint.weight_map"] == "warn"
    indexed = lint(read_local(make_checkpoint("indexed", mtp_file="model-mtp.safetensors")))
    assert indexed.ok


def test_missing_head_norm_fails_and_own_head_is_reported(make_checkpoint: MakeCkpt) -> None:
    report = lint(read_local(make_checkpoint(mtp_head_norm=False)))
    head = check(report, "checkpoint.mtp_head")
    assert head.status == "fail" and "mtp.0.norm.weight" in head.summary and "0 % acceptance" in head.summary
    own = lint(read_local(make_checkpoint("own", mtp_own_head=True)))
    assert "vLLM replaces the draft's own mtp.0.head.weight" in check(own, "checkpoint.mtp_head").summary


def test_on_disk_ignore_names_warn_with_the_corrected_list_and_fix_writes_a_copy(
        make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    ignore = ["layers.0.attn.compressor.fused_wkv_wgate", "layers.0.ffn.shared_experts.w1",
              "layers.0.ffn.shared_experts.w3", "layers.1.ffn.shared_experts.w2", "mtp.0.e_proj", "head",
              "lm_head", "re:.*gate$"]
    src = make_checkpoint(ignore=ignore)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in src.iterdir()}
    report = lint(read_local(src))
    warn = check(report, "checkpoint.quant_ignore")
    assert report.ok and warn.status == "warn"
    assert "--hf-config-path" in (warn.fix or "")
    corrected = ["model.layers.0.attn.compressor.fused_wkv_wgate", "model.layers.0.ffn.shared_experts.gate_up_proj",
                 "model.layers.1.ffn.shared_experts.down_proj", "model.layers.2.e_proj", "lm_head", "re:.*gate$"]
    assert [f.corrected for f in report.ignore_fixes] == [corrected]
    assert str(corrected) in warn.summary

    out = tmp_path / "wd" / "checkpoint-config"
    result = write_config_copy(out, read_local(src).config or {}, report.ignore_fixes, local_reader(src), str(src))
    assert result.hf_config_path == out
    written = json.loads((out / "config.json").read_text())
    assert written["quantization_config"]["ignore"] == corrected
    assert written["num_hidden_layers"] == 2 and written["model_type"] == "deepseek_v4"
    assert (out / "generation_config.json").read_bytes() == (src / "generation_config.json").read_bytes()
    assert read_fix_note(out)["changes"][0]["corrected"] == corrected  # type: ignore[index]
    assert {p.name for p in out.iterdir()} == {"config.json", "generation_config.json", FIX_NOTE}
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in src.iterdir()}
    assert after == before, "the checkpoint itself must never be edited"
    # The copy is complete: linting the corrected config finds nothing to fix.
    fixed = read_local(src)
    fixed.config = written
    assert statuses(lint(fixed))["checkpoint.quant_ignore"] == "pass"


def test_fused_module_listed_with_only_one_shard_is_called_out(make_checkpoint: MakeCkpt) -> None:
    report = lint(read_local(make_checkpoint(ignore=["layers.0.ffn.shared_experts.w1", "mtp.0.attn.wq_a"])))
    fix = report.ignore_fixes[0]
    assert fix.partial_groups == ["model.layers.0.ffn.shared_experts.gate_up_proj", "model.layers.2.attn.fused_wqa_wkv"]
    assert "only some shards" in check(report, "checkpoint.quant_ignore").summary


def test_runtime_names_are_stable_and_on_disk_names_map() -> None:
    rules = load_rules()
    assert runtime_name("model.layers.3.ffn.shared_experts.gate_up_proj", rules, 43) == \
        "model.layers.3.ffn.shared_experts.gate_up_proj"
    assert runtime_name("layers.7.attn.wq_a", rules, 43) == "model.layers.7.attn.fused_wqa_wkv"
    assert runtime_name("layers.7.attn.indexer.compressor.wgate", rules, 43) == \
        "model.layers.7.attn.indexer.compressor.fused_wkv_wgate"
    assert runtime_name("mtp.0.ffn.shared_experts.w2", rules, 43) == "model.layers.43.ffn.shared_experts.down_proj"
    assert runtime_name("Linear", rules, 43) == "Linear"
    assert runtime_name("re:layers\\..*", rules, 43) == "re:layers\\..*"
    assert ignore_fixes({"quantization_config": {"ignore": ["lm_head", "model.layers.0.attn.wo_a"]}}, rules) == []


def test_corrupt_index_json_fails(make_checkpoint: MakeCkpt) -> None:
    src = make_checkpoint()
    index = src / "model.safetensors.index.json"
    index.write_text(index.read_text()[:-40])
    report = lint(read_local(src))
    assert statuses(report)["checkpoint.index"] == "fail"
    assert "does not parse" in check(report, "checkpoint.index").summary
    assert "download --verify" in (check(report, "checkpoint.index").fix or "")


def test_missing_shard_fails(make_checkpoint: MakeCkpt) -> None:
    src = make_checkpoint()
    (src / "model-00002-of-00003.safetensors").unlink()
    report = lint(read_local(src))
    shards = check(report, "checkpoint.shards")
    assert shards.status == "fail" and "model-00002-of-00003.safetensors" in shards.summary


def test_truncated_and_garbage_shards_fail_the_header_check(make_checkpoint: MakeCkpt) -> None:
    src = make_checkpoint()
    shard = src / "model-00001-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    report = lint(read_local(src))
    headers = check(report, "checkpoint.headers")
    assert headers.status == "fail" and "truncated" in headers.summary
    shard.write_bytes(struct.pack("<Q", 12) + b"not json at all")
    assert "does not parse" in check(lint(read_local(src)), "checkpoint.headers").summary
    shard.write_bytes(b"\x01\x02")
    assert "too small" in (read_local_header(shard).error or "")


def test_tensor_in_two_shards_and_twice_in_the_index_fail(make_checkpoint: MakeCkpt) -> None:
    src = make_checkpoint()
    index = src / "model.safetensors.index.json"
    text = index.read_text()
    twice = '"weight_map": {\n    "embed.weight": "model-00002-of-00003.safetensors",'
    index.write_text(text.replace('"weight_map": {', twice, 1))
    report = lint(read_local(src))
    dup = check(report, "checkpoint.duplicates")
    assert dup.status == "fail" and "listed twice in the index: embed.weight" in dup.summary
    other = make_checkpoint("dup-shard")
    save_shard(other / "model-00003-of-00003.safetensors",
               {"embed.weight": ("BF16", (64, 64)), "mtp.0.enorm.weight": ("F32", (64,))}, np.random.default_rng(1))
    report = lint(read_local(other))
    assert "in more than one shard" in check(report, "checkpoint.duplicates").summary


def test_tiny_cpu_model_in_hf_naming_passes(tmp_path: Path) -> None:
    src = generate_tiny_checkpoint(tmp_path / "tiny")
    report = lint(read_local(src), vllm_version="0.32.0")
    assert report.ok, [c for c in report.checks if c.status == "fail"]
    assert report.mtp is not None and report.mtp.naming == "hf"
    assert [layer.prefix for layer in report.mtp.layers.values()] == ["model.layers.2."]
    assert statuses(report)["checkpoint.index"] == "pass"  # single model.safetensors
    head = check(report, "checkpoint.mtp_head").summary
    assert "model.layers.2.shared_head.head.weight" in head and "lm_head.weight" in head
    assert "F32" in check(report, "checkpoint.mtp_dtypes").summary


def test_version_tuple_orders_releases() -> None:
    assert version_tuple("0.33.0") > version_tuple("0.32.9")
    assert version_tuple("0.33.0rc1+cu130") == (0, 33, 0)
    assert version_tuple("1.0") > version_tuple("0.99.99")


@pytest.mark.parametrize("text", ["[1, 2]", '{"metadata": {}}', '{"weight_map": {"a": 3}}'])
def test_index_without_a_weight_map_object_fails(make_checkpoint: MakeCkpt, text: str) -> None:
    src = make_checkpoint()
    (src / "model.safetensors.index.json").write_text(text)
    assert statuses(lint(read_local(src)))["checkpoint.index"] == "fail"


def test_tied_embeddings_count_as_the_targets_head(make_checkpoint: MakeCkpt) -> None:
    src = make_checkpoint()
    meta = read_local(src)
    for shard in meta.shards.values():
        shard.tensors.pop("head.weight", None)
    assert check(lint(meta), "checkpoint.mtp_head").status == "fail"
    assert meta.config is not None
    meta.config["tie_word_embeddings"] = True
    assert "shared with the target's embed.weight" in check(lint(meta), "checkpoint.mtp_head").summary


def test_mtp_checks_are_skipped_not_failed_when_nothing_can_be_read(make_checkpoint: MakeCkpt) -> None:
    src = make_checkpoint()
    (src / "model.safetensors.index.json").write_text("{not json")
    report = lint(read_local(src))
    mtp = {k: v for k, v in statuses(report).items() if k.startswith("checkpoint.mtp_")}
    assert set(mtp.values()) == {"skip"} and len(mtp) == 5
    assert "no readable index" in check(report, "checkpoint.mtp_tensors").summary
    assert [c.id for c in report.failed()] == ["checkpoint.index"]


def test_lint_targets_are_a_directory_or_a_repo_id(make_checkpoint: MakeCkpt, tmp_path: Path) -> None:
    src = make_checkpoint()
    assert parse_target(str(src)).kind == "local"
    remote = parse_target("deepseek-ai/DeepSeek-V4-Flash@0731")
    assert (remote.kind, remote.repo, remote.revision) == ("remote", "deepseek-ai/DeepSeek-V4-Flash", "0731")
    assert parse_target("org/name").revision == "main"
    with pytest.raises(UsageError, match="is a file"):
        parse_target(str(src / "config.json"))
    with pytest.raises(UsageError, match="not a repo id"):
        parse_target(str(tmp_path / "missing" / "dir" / "x"))
