"""The tiny DeepSeek-V3 + MTP checkpoint: shapes vLLM's CPU backend takes, the crafted path, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from dsv4setup.tinymodel import ANSWER_WORD, CHAT_TEMPLATE, generate_tiny_checkpoint


def _rms(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def test_config_and_tensor_names_follow_deepseek_v3_with_one_mtp_layer(tmp_path: Path) -> None:
    out = generate_tiny_checkpoint(tmp_path / "tiny")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["model_type"] == "deepseek_v3"
    assert (config["kv_lora_rank"], config["qk_rope_head_dim"]) == (512, 64)  # the CPU MLA kernel's only shape
    assert config["num_nextn_predict_layers"] == 1 and config["num_hidden_layers"] == 2
    assert (config["topk_method"], config["scoring_func"]) == ("noaux_tc", "sigmoid")
    tensors = load_file(out / "model.safetensors")
    mtp = {k for k in tensors if k.startswith("model.layers.2.")}
    for name in ("enorm", "hnorm", "eh_proj", "shared_head.norm", "shared_head.head", "embed_tokens"):
        assert f"model.layers.2.{name}.weight" in mtp
    assert "model.layers.2.mlp.experts.3.down_proj.weight" in mtp and "model.layers.2.mlp.gate.weight" in mtp
    assert "model.layers.0.mlp.down_proj.weight" in tensors  # first_k_dense_replace: layer 0 is dense
    assert "model.layers.1.mlp.shared_experts.up_proj.weight" in tensors
    assert tensors["model.layers.2.eh_proj.weight"].shape == (64, 128)
    assert tensors["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"].shape == (576, 64)
    assert sum(t.size for t in tensors.values()) < 1_000_000
    assert all(t.dtype == np.float32 for t in tensors.values())


def test_crafted_path_makes_target_and_draft_predict_the_same_token(tmp_path: Path) -> None:
    out = generate_tiny_checkpoint(tmp_path / "tiny")
    t = load_file(out / "model.safetensors")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    answer = tok.token_to_id("Ġ" + ANSWER_WORD)
    assert tok.decode([answer]) == " " + ANSWER_WORD
    # no layer writes dimension 0 of the residual stream
    writers = [k for k in t if k.endswith(("o_proj.weight", "down_proj.weight"))]
    assert writers and all(not t[k][0].any() for k in writers)
    assert (t["model.embed_tokens.weight"][:, 0] == 1.0).all()
    # target: any residual whose dim 0 is 1 -> lm_head argmax is the answer token
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((5, 64)).astype(np.float32)
    hidden[:, 0] = 1.0
    logits = _rms(hidden) @ t["lm_head.weight"].T
    assert (logits.argmax(-1) == answer).all()
    # draft: eh_proj row 0 reads dim 0 of both inputs, so its output dim 0 is positive, same argmax
    eh_in = np.concatenate([_rms(hidden), _rms(hidden)], axis=-1)
    draft_hidden = eh_in @ t["model.layers.2.eh_proj.weight"].T
    assert (draft_hidden[:, 0] > 0).all()
    assert ((_rms(draft_hidden) @ t["model.layers.2.shared_head.head.weight"].T).argmax(-1) == answer).all()


def test_tokenizer_files_need_no_hub_and_carry_a_chat_template(tmp_path: Path) -> None:
    out = generate_tiny_checkpoint(tmp_path / "tiny")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == 512
    assert tok.decode(tok.encode("What is 2 + 3?").ids) == "What is 2 + 3?"
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["chat_template"] == CHAT_TEMPLATE
    assert tok.token_to_id(cfg["bos_token"]) == 0 and tok.token_to_id(cfg["eos_token"]) == 1


def test_same_seed_same_bytes_across_processes_other_seed_other_weights(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from dsv4setup.tinymodel import generate_tiny_checkpoint; "
            "generate_tiny_checkpoint(Path(sys.argv[1]), seed=int(sys.argv[2]))")
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name), seed], check=True)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
                     "tokenizer.json", "tokenizer_config.json"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "c" / "model.safetensors").read_bytes()
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "c" / "tokenizer.json").read_bytes()


def test_varied_model_is_a_bigram_the_context_perturbs_and_the_draft_reads_only_the_next_token(
        tmp_path: Path) -> None:
    out = generate_tiny_checkpoint(tmp_path / "varied", kind="varied")
    t = load_file(out / "model.safetensors")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads((generate_tiny_checkpoint(tmp_path / "easy") / "config.json").read_text())
    head, embed = t["lm_head.weight"], t["model.embed_tokens.weight"]
    special = [tok.token_to_id(s) for s in ("<bos>", "<eos>", "<|User|>", "<|Assistant|>")]
    assert not head[special].any() and head[4:].std() > 0.5  # EOS and chat markers never win the argmax
    # the bigram part alone already maps tokens to many different next tokens (output depends on the input)
    bigram = (_rms(embed[4:]) @ head.T).argmax(-1)
    assert len(set(bigram.tolist())) > 100 and not set(bigram.tolist()) & set(special)
    # the layers write into the residual stream (the context moves the target away from the bigram) ...
    assert all(t[k].any() for k in t if k.endswith(("o_proj.weight", "down_proj.weight")))
    # ... and the draft sees the next token's embedding only, through the shared head
    eh = t["model.layers.2.eh_proj.weight"]
    assert (eh[:, :64] == np.eye(64)).all() and not eh[:, 64:].any()
    assert (t["model.layers.2.shared_head.head.weight"] == head).all()
    assert (t["model.layers.2.embed_tokens.weight"] == embed).all()
    again = load_file(generate_tiny_checkpoint(tmp_path / "again", kind="varied") / "model.safetensors")
    assert all((again[k] == v).all() for k, v in t.items())  # same seed, same weights
