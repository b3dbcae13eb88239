"""`profile import-recipe`: a vllm-project/recipes model file becomes a profile, overrides applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsv4setup.core.errors import EXIT_USAGE, UsageError
from dsv4setup.core.state import State
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.loader import load_profile_file
from dsv4setup.profiles.recipe import import_recipe
from dsv4setup.profiles.resolve import resolve_profile
from dsv4setup.serve.command import render_serve
from tests.profiles.conftest import FIXTURES, assert_valid

RECIPE = FIXTURES / "recipe-dsv4-flash.yaml"


def test_hopper_generation_overrides_apply(workdir: Workdir) -> None:
    result = import_recipe(RECIPE, "h200")
    p = result.profile
    assert p.model.repo == "deepseek-ai/DeepSeek-V4-Flash" and not p.verified
    assert p.spec.num_speculative_tokens == 1  # modes.mtp k=2, hopper override k=1
    assert p.serve.max_num_seqs == 16  # hardware_overrides.hopper.extra_args
    assert (p.serve.kv_cache_dtype, p.serve.block_size, p.serve.trust_remote_code) == ("fp8", 256, True)
    assert p.serve.extra_args == ["--tokenizer-mode", "deepseek_v4", "--tool-call-parser", "deepseek_v4",
                                  "--enable-auto-tool-choice", "--reasoning-parser", "deepseek_v4"]
    assert p.env == {"VLLM_ENGINE_READY_TIMEOUT_S": "3600"}
    assert (p.match.gpu_name, p.match.compute_capability, p.toolkit.arch) == (r"\bH200\b", ["9.0"], "sm_90a")
    sections = [a.section for a in result.applied]
    assert "features.spec_decoding.modes.mtp.hardware_overrides.hopper.args" in sections
    assert "hardware_overrides.blackwell.extra_args" not in sections
    argv = render_serve(p, workdir, State()).argv
    assert json.loads(argv[argv.index("--speculative-config") + 1])["num_speculative_tokens"] == 1


def test_profile_key_overrides_apply_after_the_generation_and_sm100_extras_are_dropped() -> None:
    result = import_recipe(RECIPE, "rtx_pro_6000")
    p = result.profile
    assert p.spec.num_speculative_tokens == 3  # modes.mtp.hardware_overrides.rtx_pro_6000
    assert (p.serve.max_model_len, p.serve.max_num_seqs, p.serve.gpu_memory_utilization) == (524288, 2, 0.93)
    assert p.env["NCCL_P2P_DISABLE"] == "1" and p.env["VLLM_USE_DEEP_GEMM"] == "1"  # key and generation env
    assert p.env["VLLM_TRITON_MLA_SPARSE_HEAD_BLOCK_SIZE"] == "4"  # added: SM12x fact
    assert p.serve.disable_custom_all_reduce is True
    assert not any("fp4_indexer" in a or "mega_moe" in a for a in p.serve.extra_args)
    dropped = {d["arg"].split()[0]: d for d in result.dropped}
    assert set(dropped) == {"--attention-config.use-fp4-indexer-cache", "--moe-backend"}
    assert all("SM 12.x" in d["reason"] for d in dropped.values())
    assert result.added["env"]["VLLM_USE_FLASHINFER_SAMPLER"] == "0"


def test_blackwell_keeps_its_extras_and_a_strategy_replaces_them() -> None:
    plain = import_recipe(RECIPE, "b200")
    assert plain.profile.serve.extra_args[-2:] == ["--moe-backend", "deep_gemm_mega_moe"]
    assert plain.profile.spec.num_speculative_tokens == 2
    [dropped] = plain.dropped  # a flag the pinned vLLM does not accept, on any hardware
    assert dropped["arg"] == "--attention-config.use-fp4-indexer-cache True"
    assert "vLLM 0.33.0's parser rejects it" in dropped["reason"]
    tp = import_recipe(RECIPE, "b200", strategy="single_node_tp", tp=2)
    assert tp.profile.serve.extra_args[-1:] == ["--no-enable-flashinfer-autotune"]
    assert [d["from"] for d in tp.dropped] == ["strategy_overrides.single_node_tp.hardware_overrides.blackwell"
                                               ".extra_args"]
    assert "--moe-backend" not in tp.profile.serve.extra_args
    assert tp.profile.serve.tensor_parallel_size == 2
    assert import_recipe(RECIPE, "b200", strategy="single_node_tp").profile.serve.tensor_parallel_size == 8


def test_unknown_and_unsupported_hardware_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown hardware key"):
        import_recipe(RECIPE, "h900")
    with pytest.raises(UsageError, match="NVIDIA GPUs only"):
        import_recipe(RECIPE, "mi355x")
    with pytest.raises(UsageError, match="no strategy_overrides.pd"):
        import_recipe(RECIPE, "h200", strategy="pd")


def test_older_recipe_layout_without_modes(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(RECIPE.read_text().replace("    modes:\n      mtp:\n", "    x_modes:\n      x_mtp:\n")
                   .replace("  spec_decoding:\n", "  spec_decoding:\n    args: [--speculative-config, "
                            "'{\"method\":\"mtp\",\"num_speculative_tokens\":2}']\n    hardware_overrides:\n"
                            "      hopper: {args: [--speculative-config, "
                            "'{\"method\":\"mtp\",\"num_speculative_tokens\":1}']}\n"))
    assert import_recipe(old, "b200").profile.spec.num_speculative_tokens == 2
    assert import_recipe(old, "h200").profile.spec.num_speculative_tokens == 1


def test_import_cli_writes_a_loadable_profile_into_the_workdir(workdir: Workdir, cli) -> None:
    result = cli("profile", "import-recipe", str(RECIPE), "--hardware", "rtx_pro_6000",
                 "--workdir", str(workdir.root), "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert_valid(doc, "profile-import")
    written = Path(doc["out"])
    assert written == workdir.root / "profiles" / "deepseek-v4-flash-rtx_pro_6000.yaml"
    assert load_profile_file(written).spec.num_speculative_tokens == 3
    assert [d["from"] for d in doc["dropped"]] == ["hardware_overrides.blackwell.extra_args"] * 2
    resolved = resolve_profile(workdir, "deepseek-v4-flash-rtx_pro_6000", [])  # usable by name at once
    assert resolved.profile.serve.disable_custom_all_reduce
    again = cli("profile", "import-recipe", str(RECIPE), "--hardware", "rtx_pro_6000", "--workdir",
                str(workdir.root))
    assert again.code == EXIT_USAGE and "--force" in again.stderr
    listed = cli("profile", "list", "--workdir", str(workdir.root), "--json").json()
    assert {"name": "deepseek-v4-flash-rtx_pro_6000", "shipped": False}.items() <= \
        next(r for r in listed["profiles"] if not r["shipped"]).items()


def test_import_cli_prints_yaml_with_out_dash(workdir: Workdir, cli, tmp_path: Path) -> None:
    result = cli("profile", "import-recipe", str(RECIPE), "--hardware", "h200", "--out", "-",
                 "--name", "flash-h200", "--workdir", str(workdir.root))
    assert result.code == 0
    assert result.stdout.startswith("# yaml-language-server")
    copy = tmp_path / "flash-h200.yaml"
    copy.write_text(result.stdout)
    assert load_profile_file(copy).name == "flash-h200"
    assert "applied features.spec_decoding.modes.mtp.hardware_overrides.hopper.args" in result.stderr
    assert not (workdir.root / "profiles").exists()
