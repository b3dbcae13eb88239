"""Findings: facts about the TP group that imply serve args and env (the mapping is in rules.yaml)."""

from __future__ import annotations

from typing import Any

from dsv4setup.hardware.arch import arch_from_capability, torch_arch_list
from dsv4setup.hardware.facts import group_links, interconnect
from dsv4setup.preflight.target import Ctx

P2P_BAD = ("not_supported", "disabled")


def torch_arch(cc: str | None) -> str | None:
    """"12.0" -> "12.0a": the TORCH_CUDA_ARCH_LIST entry of the GPU's nvcc target."""
    return torch_arch_list(arch_from_capability(cc)) if cc is not None else None


def p2p_problems(c: Ctx) -> list[str]:
    """"0-1 read not_supported" for each TP pair whose P2P NVML reports unusable."""
    problems = []
    for a, b, entry in group_links(c.snap, c.group):
        if entry is None:
            continue
        bad = [f"{kind} {entry.get(f'p2p_{kind}')}" for kind in ("read", "write")
               if entry.get(f"p2p_{kind}") in P2P_BAD]
        if bad:
            problems.append(f"GPU {a}-{b} {', '.join(bad)}")
    return problems


def active_findings(c: Ctx) -> list[str]:
    """Names of the rules.yaml findings that hold for this machine and deployment, in table order."""
    if c.target.cpu_only or not c.group:
        return []
    held = set()
    if c.family == "sm12x":
        held.add("sm12x")
    if c.multi_gpu:
        ic = interconnect(c.snap, c.group)
        if c.family == "sm12x" and ic == "pcie":
            held.add("pcie_custom_all_reduce")
        if p2p_problems(c):
            held.add("p2p_unavailable")
        if c.host.get("iommu") == "translated" and ic != "nvlink":
            held.add("iommu_translated")
    if c.family == "hopper" and all(g.get("c2c") for g in c.group):
        held.add("hopper_c2c")
    return [name for name in c.rules.findings if name in held]


def implied(c: Ctx, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The serve args and env the findings imply, deduplicated, in rules order."""
    args: list[str] = []
    env: dict[str, str] = {}
    values = {"torch_arch": torch_arch(c.cc) or ""}
    for name in names:
        finding = c.rules.findings[name]
        args.extend(a for a in finding.serve_args if a not in args)
        env.update({k: v.format(**values) for k, v in finding.env_for(c.target.vllm_version).items()})
    return args, env


def recommended_k(c: Ctx) -> int:
    """num_speculative_tokens: the profile's when its GPU family allows it, else the family default."""
    k = c.target.num_speculative_tokens
    if c.target.cpu_only:
        return k
    family = c.rules.spec_families.get(c.family or "")
    if family is None:
        return k
    return k if k in family.allowed_for(c.target.vllm_version) else family.default


def findings(c: Ctx) -> dict[str, Any]:
    """What the findings add to `vllm serve` (the serve step reads this from the preflight step's outputs)."""
    args, env = implied(c, active_findings(c))
    return {"serve_args": args, "env": env}
