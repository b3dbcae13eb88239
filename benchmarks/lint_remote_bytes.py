"""Bytes the remote checkpoint lint fetches, against the size of the checkpoint it judges.

Builds a checkpoint with DeepSeek-V4-Flash proportions (43 layers + 1 MTP layer, 256 routed
experts in MXFP4 with E8M0 scales, FP8 attention with block scales, ~46 shards, ~155 GB) as
*sparse* files: real safetensors headers, data regions that take no disk. Serves it from the
test suite's local hub (tests/checkpoint/hubserver.py), runs `dsv4setup checkpoint lint ORG/NAME`'s
code path (real huggingface_hub: model info, config and index downloads, Range reads of each
shard header) and counts every body byte the hub and its CDN sent. The baseline beside it is
what `download` would fetch before a local lint could run: every byte.

    python benchmarks/lint_remote_bytes.py [--layers 43] [--experts 256] [--shards 46]

Needs a filesystem with sparse files (ext4, xfs, tmpfs); writes a few MB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.checkpoint.hubserver import HubServer  # noqa: E402

BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1}
H, VOCAB, Q_LORA, HEADS, HEAD_DIM, O_LORA, O_GROUPS, MOE_INTER, IDX_HEADS, IDX_DIM = (
    4096, 129280, 1024, 64, 512, 1024, 8, 2048, 64, 128)
Tensors = list[tuple[str, str, tuple[int, ...]]]


def fp8(name: str, out_dim: int, in_dim: int) -> Tensors:
    return [(f"{name}.weight", "F8_E4M3", (out_dim, in_dim)),
            (f"{name}.scale", "F8_E8M0", (math.ceil(out_dim / 128), math.ceil(in_dim / 128)))]


def fp4(name: str, out_dim: int, in_dim: int) -> Tensors:
    return [(f"{name}.weight", "I8", (out_dim, in_dim // 2)), (f"{name}.scale", "F8_E8M0", (out_dim, in_dim // 32))]


def block(prefix: str, experts: int) -> Tensors:
    t: Tensors = [(f"{prefix}attn_norm.weight", "BF16", (H,)), (f"{prefix}ffn_norm.weight", "BF16", (H,)),
                  (f"{prefix}hc_attn_fn", "F32", (24, 4 * H)), (f"{prefix}hc_ffn_fn", "F32", (24, 4 * H)),
                  (f"{prefix}hc_attn_base", "F32", (24,)), (f"{prefix}hc_ffn_base", "F32", (24,))]
    t += fp8(f"{prefix}attn.wq_a", Q_LORA, H) + [(f"{prefix}attn.q_norm.weight", "BF16", (Q_LORA,))]
    t += fp8(f"{prefix}attn.wq_b", HEADS * HEAD_DIM, Q_LORA) + fp8(f"{prefix}attn.wkv", HEAD_DIM, H)
    t += [(f"{prefix}attn.kv_norm.weight", "BF16", (HEAD_DIM,)), (f"{prefix}attn.attn_sink", "F32", (HEADS,))]
    t += fp8(f"{prefix}attn.wo_a", O_GROUPS * O_LORA, HEADS * HEAD_DIM // O_GROUPS) + fp8(
        f"{prefix}attn.wo_b", H, O_GROUPS * O_LORA)
    for comp in ("attn.compressor", "attn.indexer.compressor"):
        t += [(f"{prefix}{comp}.wkv.weight", "BF16", (2 * IDX_DIM, H)),
              (f"{prefix}{comp}.wgate.weight", "BF16", (2 * IDX_DIM, H)),
              (f"{prefix}{comp}.ape", "F32", (4, 2 * IDX_DIM)), (f"{prefix}{comp}.norm.weight", "BF16", (IDX_DIM,))]
    t += fp8(f"{prefix}attn.indexer.wq_b", IDX_HEADS * IDX_DIM, Q_LORA)
    t += [(f"{prefix}attn.indexer.weights_proj.weight", "BF16", (IDX_HEADS, H)),
          (f"{prefix}ffn.gate.weight", "BF16", (experts, H)), (f"{prefix}ffn.gate.bias", "F32", (experts,))]
    for e in range(experts):
        t += fp4(f"{prefix}ffn.experts.{e}.w1", MOE_INTER, H) + fp4(f"{prefix}ffn.experts.{e}.w2", H, MOE_INTER)
        t += fp4(f"{prefix}ffn.experts.{e}.w3", MOE_INTER, H)
    for w, (o, i) in (("w1", (MOE_INTER, H)), ("w2", (H, MOE_INTER)), ("w3", (MOE_INTER, H))):
        t += fp8(f"{prefix}ffn.shared_experts.{w}", o, i)
    return t


def model_tensors(layers: int, experts: int) -> Tensors:
    tensors: Tensors = [("embed.weight", "BF16", (VOCAB, H))]
    for i in range(layers):
        tensors += block(f"layers.{i}.", experts)
    tensors += [("norm.weight", "BF16", (H,)), ("head.weight", "BF16", (VOCAB, H)),
                ("hc_head_fn", "F32", (4, 4 * H)), ("hc_head_base", "F32", (4,)), ("hc_head_scale", "F32", (1,))]
    mtp = "mtp.0."
    tensors += [(f"{mtp}enorm.weight", "BF16", (H,)), (f"{mtp}hnorm.weight", "BF16", (H,)),
                (f"{mtp}norm.weight", "BF16", (H,)), (f"{mtp}hc_head_fn", "F32", (4, 4 * H)),
                (f"{mtp}hc_head_base", "F32", (4,)), (f"{mtp}hc_head_scale", "F32", (1,))]
    tensors += fp8(f"{mtp}e_proj", H, H) + fp8(f"{mtp}h_proj", H, H) + block(mtp, experts)
    return tensors


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * BYTES[dtype]


def write_sparse_shard(path: Path, tensors: Tensors) -> int:
    """A real safetensors header; the data region is a hole (truncate), so it takes no disk."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        size = nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        fh.truncate(8 + len(raw) + offset)
    return 8 + len(raw) + offset


def build(out: Path, layers: int, experts: int, shards: int) -> tuple[int, int, int]:
    """Write the checkpoint; returns (total bytes, tensors, header bytes)."""
    tensors = model_tensors(layers, experts)
    total = sum(nbytes(d, s) for _, d, s in tensors)
    per_shard = total / shards
    groups: list[Tensors] = [[]]
    filled = 0
    for item in tensors:
        if filled >= per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(item)
        filled += nbytes(item[1], item[2])
    weight_map: dict[str, str] = {}
    size = headers = 0
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        file_size = write_sparse_shard(out / name, group)
        size += file_size
        headers += file_size - sum(nbytes(d, s) for _, d, s in group)
        weight_map.update({t: name for t, _, _ in group})
    index = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    (out / "model.safetensors.index.json").write_text(index)
    config = {"architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "hidden_size": H,
              "num_hidden_layers": layers, "num_nextn_predict_layers": 1, "vocab_size": VOCAB,
              "n_routed_experts": experts, "expert_dtype": "fp4",
              "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0",
                                      "activation_scheme": "dynamic", "weight_block_size": [128, 128]}}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return size + len(index) + len(json.dumps(config, indent=2)), len(tensors), headers


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=43)
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--shards", type=int, default=46)
    args = parser.parse_args()
    repo = "bench/DeepSeek-V4-Flash-shaped"
    with tempfile.TemporaryDirectory(prefix="dsv4setup-lintbench-") as tmp:
        src = Path(tmp) / "ckpt"
        src.mkdir()
        started = time.perf_counter()
        size, n_tensors, header_bytes = build(src, args.layers, args.experts, args.shards)
        on_disk = sum(p.stat().st_blocks * 512 for p in src.iterdir())
        print(f"checkpoint: {n_tensors} tensors in {args.shards} shards, {human(size)} "
              f"({human(header_bytes)} of headers; sparse: {human(on_disk)} on disk; built in "
              f"{time.perf_counter() - started:.1f} s)")
        with HubServer({repo: {"main": src}}, content_hashes=False) as hub:
            os.environ["HF_ENDPOINT"] = hub.endpoint
            from dsv4setup.checkpoint.service import parse_target, run_lint

            hub.reset_stats()
            started = time.perf_counter()
            outcome = run_lint(parse_target(repo))
            elapsed = time.perf_counter() - started
            fetched = hub.bytes_served()
            requests = len(hub.requests)
        report = outcome.report
        failed = [c.id for c in report.failed()]
        verdict = "all pass" if not failed else "failed: " + ", ".join(failed)
        print(f"remote lint: {len(report.checks)} checks ({verdict}), "
              f"MTP tensors {report.mtp.tensor_count if report.mtp else 0}, {elapsed:.1f} s")
        print()
        print(f"{'':28}{'bytes fetched':>16}{'ratio to checkpoint':>22}")
        print(f"{'download, then local lint':28}{human(size):>16}{1.0:>22.6f}")
        print(f"{'remote lint (headers only)':28}{human(fetched):>16}{fetched / size:>22.6f}")
        print()
        print(f"remote lint fetched 1/{size / fetched:,.0f} of the checkpoint in {requests} HTTP requests "
              f"({fetched / max(header_bytes, 1):.2f}x the header bytes)")


if __name__ == "__main__":
    main()
