"""What is being judged: the snapshot plus the deployment the profile describes (or a default one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dsv4setup.hardware.facts import Gpu, Snapshot, cc_str, tp_group, visible_gpus
from dsv4setup.hardware.memory import need_gb, usable_gb
from dsv4setup.hardware.rules import Rules

if TYPE_CHECKING:
    from dsv4setup.profiles.model import Profile


@dataclass(frozen=True)
class Target:
    """The deployment the checks measure the machine against."""

    profile: Profile | None
    cpu_only: bool
    tensor_parallel_size: int  # the whole TP group (all nodes)
    gpus_per_node: int  # the part of the TP group on this node
    nodes: int
    unconfigured_nodes: tuple[str, ...]  # multinode workers without an address
    vllm_version: str | None
    vllm_source: str
    gpu_memory_utilization: float
    max_model_len: int
    checkpoint_gb: float
    num_speculative_tokens: int
    serve_extra_args: tuple[str, ...] = ()
    disable_custom_all_reduce: bool = False
    enforce_eager: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @property
    def profile_name(self) -> str | None:
        return self.profile.name if self.profile is not None else None


@dataclass(frozen=True)
class Ctx:
    """Everything a check function reads."""

    snap: Snapshot
    target: Target
    rules: Rules
    group: list[Gpu]  # the TP GPUs on this node

    @property
    def host(self) -> dict[str, Any]:
        return self.snap.get("host") or {}

    @property
    def cc(self) -> str | None:
        return cc_str(self.group[0]) if self.group else None

    @property
    def family(self) -> str | None:
        return self.rules.family(self.cc)

    @property
    def multi_gpu(self) -> bool:
        return len(self.group) > 1


def _fitting_tp(snap: Snapshot, rules: Rules) -> int:
    """Without a profile: the smallest TP size whose memory fits, else the largest the node allows."""
    count = len(visible_gpus(snap))
    sizes = [s for s in rules.tp_sizes if s <= count]
    if not sizes:
        return 1
    mem = rules.memory
    for size in sizes:
        usable = usable_gb(snap, tp_group(snap, size), mem.default_gpu_memory_utilization, rules)
        if usable is not None and usable >= need_gb(rules, mem.checkpoint_gb, mem.default_max_model_len, size):
            return size
    return sizes[-1]


def _serve_value(profile: Profile, key: str) -> Any:
    """A serve setting, else the one of the profile's default preset."""
    value = getattr(profile.serve, key, None)
    if value is None and profile.preset and profile.preset in profile.presets:
        value = getattr(profile.presets[profile.preset], key, None)
    return value


def build_target(snap: Snapshot, profile: Profile | None, rules: Rules) -> Target:
    mem = rules.memory
    if profile is None:
        tp = _fitting_tp(snap, rules)
        return Target(profile=None, cpu_only=False, tensor_parallel_size=tp, gpus_per_node=tp, nodes=1,
                      unconfigured_nodes=(), vllm_version=rules.default_vllm_version, vllm_source="wheel",
                      gpu_memory_utilization=mem.default_gpu_memory_utilization,
                      max_model_len=mem.default_max_model_len, checkpoint_gb=mem.checkpoint_gb,
                      num_speculative_tokens=rules.spec_default)
    cpu_only = profile.match.cpu_only
    tp = profile.serve.tensor_parallel_size
    nodes, per_node = 1, tp
    unconfigured: tuple[str, ...] = ()
    if profile.multinode is not None:
        nodes = len(profile.multinode.nodes)
        per_node = profile.multinode.head.gpus
        unconfigured = tuple(n.name for n in profile.multinode.nodes if n.role == "worker" and not n.address)
    default_ckpt = rules.host_cpu.checkpoint_gb if cpu_only and profile.model.generate else mem.checkpoint_gb
    return Target(
        profile=profile, cpu_only=cpu_only, tensor_parallel_size=tp, gpus_per_node=per_node, nodes=nodes,
        unconfigured_nodes=unconfigured, vllm_version=profile.vllm.version, vllm_source=profile.vllm.source,
        gpu_memory_utilization=_serve_value(profile, "gpu_memory_utilization") or mem.default_gpu_memory_utilization,
        max_model_len=_serve_value(profile, "max_model_len") or mem.default_max_model_len,
        checkpoint_gb=profile.model.expected_size_gb or default_ckpt or mem.checkpoint_gb,
        num_speculative_tokens=profile.spec.num_speculative_tokens,
        serve_extra_args=tuple(profile.serve.extra_args),
        disable_custom_all_reduce=profile.serve.disable_custom_all_reduce,
        enforce_eager=profile.serve.enforce_eager,
        env=dict(profile.env),
    )


def make_ctx(snap: Snapshot, profile: Profile | None, rules: Rules) -> Ctx:
    target = build_target(snap, profile, rules)
    group = [] if target.cpu_only else tp_group(snap, target.gpus_per_node)
    return Ctx(snap, target, rules, group)
