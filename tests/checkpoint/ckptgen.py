"""Tiny DeepSeek-V4-style checkpoints for the hub tests: real safetensors files, real headers.

Tensor names follow DeepSeek-V4's on-disk layout (`embed.weight`, `layers.{i}.attn.wq_a.weight`
with an FP8 weight and an E8M0 `.scale`, MXFP4 routed experts `ffn.experts.{e}.w1`, the MTP
block under `mtp.0.`). Shapes are tiny; the variants reproduce the failures seen in the field:
an MTP block left BF16 (canada-quant), FP8 (official), mixed W4A16 / FP8 with `weight_scale`
(LordNeel), stripped (pastapaul), present but undeclared, ignore lists in on-disk names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from safetensors import TensorSpec, serialize_file

BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "I32": 4, "U8": 1}
ST_DTYPE = {"BF16": "bfloat16", "F32": "float32", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
            "I8": "int8", "I32": "int32", "U8": "uint8"}
MtpKind = Literal["bf16", "fp8", "mixed", "none"]


@dataclass
class CkptSpec:
    layers: int = 2
    experts: int = 2
    hidden: int = 64
    vocab: int = 64
    mtp: MtpKind = "bf16"
    declare_mtp: bool = True
    shards: int = 3
    mtp_own_head: bool = False
    mtp_head_norm: bool = True
    ignore: list[str] | None = None  # a compressed-tensors ignore list (None: native FP8 config)
    pad_bytes: int = 0  # an extra tensor of this many bytes in the first shard (download tests)
    mtp_file: str | None = None  # put the MTP block in its own file with this name
    mtp_file_indexed: bool = True  # False: that file exists but the index does not name it
    seed: int = 0
    extra_files: dict[str, str] = field(default_factory=dict)


Tensors = dict[str, tuple[str, tuple[int, ...]]]


def _fp8(out: Tensors, name: str, shape: tuple[int, int], scale: str = "scale") -> None:
    out[f"{name}.weight"] = ("F8_E4M3", shape)
    out[f"{name}.{scale}"] = ("F8_E8M0" if scale == "scale" else "F32",
                              (math.ceil(shape[0] / 128), math.ceil(shape[1] / 128)))


def _linear(out: Tensors, name: str, shape: tuple[int, int], kind: str) -> None:
    if kind == "bf16":
        out[f"{name}.weight"] = ("BF16", shape)
    elif kind == "fp8":
        _fp8(out, name, shape)
    elif kind == "fp8-weight_scale":
        _fp8(out, name, shape, "weight_scale")
    elif kind == "w4a16":  # compressed-tensors pack-quantized int4, group 32
        out[f"{name}.weight_packed"] = ("I32", (shape[0], shape[1] // 8))
        out[f"{name}.weight_scale"] = ("BF16", (shape[0], max(shape[1] // 32, 1)))
        out[f"{name}.weight_shape"] = ("I32", (2,))
    elif kind == "mxfp4":
        out[f"{name}.weight"] = ("I8", (shape[0], shape[1] // 2))
        out[f"{name}.scale"] = ("F8_E8M0", (shape[0], max(shape[1] // 32, 1)))
    else:
        raise ValueError(kind)


def _block(out: Tensors, prefix: str, spec: CkptSpec, attn: str, shared: str, experts: str) -> None:
    h = spec.hidden
    out[f"{prefix}attn_norm.weight"] = ("F32", (h,))
    out[f"{prefix}ffn_norm.weight"] = ("F32", (h,))
    _linear(out, f"{prefix}attn.wq_a", (32, h), attn)
    out[f"{prefix}attn.q_norm.weight"] = ("F32", (32,))
    _linear(out, f"{prefix}attn.wq_b", (64, 32), attn)
    _linear(out, f"{prefix}attn.wkv", (32, h), attn)
    out[f"{prefix}attn.kv_norm.weight"] = ("F32", (32,))
    _linear(out, f"{prefix}attn.wo_a", (32, 32), attn)
    _linear(out, f"{prefix}attn.wo_b", (h, 32), attn)
    out[f"{prefix}attn.attn_sink"] = ("F32", (2,))
    out[f"{prefix}attn.compressor.wkv.weight"] = ("BF16", (32, h))
    out[f"{prefix}attn.compressor.wgate.weight"] = ("BF16", (32, h))
    out[f"{prefix}attn.compressor.ape"] = ("F32", (4, 32))
    out[f"{prefix}attn.compressor.norm.weight"] = ("F32", (32,))
    out[f"{prefix}ffn.gate.weight"] = ("BF16", (spec.experts, h))
    out[f"{prefix}ffn.gate.bias"] = ("F32", (spec.experts,))
    for e in range(spec.experts):
        for w, shape in (("w1", (32, h)), ("w2", (h, 32)), ("w3", (32, h))):
            _linear(out, f"{prefix}ffn.experts.{e}.{w}", shape, experts)
    for w, shape in (("w1", (32, h)), ("w2", (h, 32)), ("w3", (32, h))):
        _linear(out, f"{prefix}ffn.shared_experts.{w}", shape, shared)


MTP_KINDS = {  # MTP block: attention, shared experts, routed experts, e_proj/h_proj
    "bf16": ("bf16", "bf16", "bf16", "bf16"),
    "fp8": ("fp8", "fp8", "mxfp4", "fp8"),
    "mixed": ("fp8-weight_scale", "bf16", "w4a16", "bf16"),
}


def v4_tensors(spec: CkptSpec) -> tuple[Tensors, Tensors]:
    """(main model tensors, MTP tensors) as name -> (dtype, shape)."""
    h = spec.hidden
    main: Tensors = {"embed.weight": ("BF16", (spec.vocab, h))}
    for i in range(spec.layers):
        _block(main, f"layers.{i}.", spec, "fp8", "fp8", "mxfp4")
    main.update({"norm.weight": ("F32", (h,)), "head.weight": ("BF16", (spec.vocab, h)),
                 "hc_head_fn": ("F32", (4, 4 * h)), "hc_head_base": ("F32", (4,)), "hc_head_scale": ("F32", (1,))})
    if spec.pad_bytes:
        main["layers.0.pad.weight"] = ("U8", (spec.pad_bytes,))
    mtp: Tensors = {}
    if spec.mtp != "none":
        attn, shared, experts, proj = MTP_KINDS[spec.mtp]
        p = "mtp.0."
        mtp.update({f"{p}enorm.weight": ("F32", (h,)), f"{p}hnorm.weight": ("F32", (h,)),
                    f"{p}hc_head_fn": ("F32", (4, 4 * h)), f"{p}hc_head_base": ("F32", (4,)),
                    f"{p}hc_head_scale": ("F32", (1,))})
        _linear(mtp, f"{p}e_proj", (h, h), proj)
        _linear(mtp, f"{p}h_proj", (h, h), proj)
        if spec.mtp_head_norm:
            mtp[f"{p}norm.weight"] = ("F32", (h,))
        if spec.mtp_own_head:
            mtp[f"{p}head.weight"] = ("BF16", (spec.vocab, h))
        _block(mtp, p, spec, attn, shared, experts)
    return main, mtp


def save_shard(path: Path, tensors: Tensors, rng: np.random.Generator) -> int:
    """Write one safetensors file with the real library; random bytes as data. Returns its size."""
    buffers = {}
    specs = {}
    for name, (dtype, shape) in tensors.items():
        nbytes = math.prod(shape) * BYTES[dtype]
        buf = rng.integers(0, 256, size=max(nbytes, 1), dtype=np.uint8)[:nbytes]
        buffers[name] = buf
        specs[name] = TensorSpec(dtype=ST_DTYPE[dtype], shape=shape, data_ptr=buf.ctypes.data, data_len=nbytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    serialize_file(specs, str(path), {"format": "pt"})
    return path.stat().st_size


def config_doc(spec: CkptSpec) -> dict:
    quant: dict = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0", "activation_scheme": "dynamic",
                   "weight_block_size": [128, 128]}
    if spec.ignore is not None:
        quant = {"quant_method": "compressed-tensors", "format": "mixed-precision",
                 "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
                                                                                  "group_size": 32}}},
                 "ignore": list(spec.ignore)}
    return {"architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "hidden_size": spec.hidden,
            "num_hidden_layers": spec.layers, "num_nextn_predict_layers": 1 if spec.declare_mtp else 0,
            "vocab_size": spec.vocab, "n_routed_experts": spec.experts, "num_experts_per_tok": 2,
            "expert_dtype": "fp4", "torch_dtype": "bfloat16", "quantization_config": quant}


def write_v4_checkpoint(out: Path, spec: CkptSpec | None = None) -> Path:
    """Write config.json, N shards + model.safetensors.index.json (and extras) into `out`."""
    spec = spec or CkptSpec()
    rng = np.random.default_rng(spec.seed)
    out.mkdir(parents=True, exist_ok=True)
    main, mtp = v4_tensors(spec)
    names = list(main)
    groups: list[tuple[str, Tensors]] = []
    per = math.ceil(len(names) / spec.shards)
    total_files = spec.shards + (1 if spec.mtp_file and mtp else 0)
    for k in range(spec.shards):
        chunk = {n: main[n] for n in names[k * per:(k + 1) * per]}
        groups.append((f"model-{k + 1:05d}-of-{total_files:05d}.safetensors", chunk))
    if mtp and spec.mtp_file:
        groups.append((spec.mtp_file, mtp))
    elif mtp:
        groups[-1][1].update(mtp)
    weight_map: dict[str, str] = {}
    total = 0
    for file_name, tensors in groups:
        total += save_shard(out / file_name, tensors, rng)
        if file_name == spec.mtp_file and not spec.mtp_file_indexed:
            continue
        weight_map.update({n: file_name for n in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(config_doc(spec), indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    for name, text in spec.extra_files.items():
        (out / name).write_text(text)
    return out
