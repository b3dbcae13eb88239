"""Rank profiles against a hardware snapshot: which hardware class is this machine?

A profile matches when every constraint in its `match` section holds (unset ones match
anything). Among matches the more specific profile wins: each constraint that is set and holds
adds to the score, so "2x Max-Q, SM 12.0, PCIe" beats a profile that only names SM 12.0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dsv4setup.hardware.facts import Snapshot, cc_str, gpu_label, interconnect, plural, visible_gpus
from dsv4setup.hardware.rules import Rules
from dsv4setup.profiles.model import DEMO_NOTICE, Profile

# Weight of each satisfied constraint; ties are broken by verified, then name.
WEIGHTS = {"cpu_only": 4.0, "compute_capability": 3.0, "gpu_name": 2.0, "gpu_count": 2.0, "min_gpu_count": 1.0,
           "interconnect": 1.0, "arch": 1.0}


@dataclass(frozen=True)
class ProfileMatch:
    profile: Profile
    matched: bool
    score: float
    reasons: tuple[str, ...]  # what held and what did not, in words

    @property
    def name(self) -> str:
        return self.profile.name

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.name, "matched": self.matched, "score": round(self.score, 2),
                "reasons": list(self.reasons)}


class _Tally:
    def __init__(self) -> None:
        self.ok = True
        self.score = 0.0
        self.reasons: list[str] = []

    def hold(self, key: str, why: str, bonus: float = 0.0) -> None:
        self.score += WEIGHTS[key] + bonus
        self.reasons.append(why)

    def miss(self, why: str) -> None:
        self.ok = False
        self.reasons.append(f"no: {why}")


def _per_node(profile: Profile) -> int:
    if profile.multinode is not None:
        return profile.multinode.head.gpus
    return profile.serve.tensor_parallel_size


def _match_count(t: _Tally, profile: Profile, count: int) -> None:
    m = profile.match
    if m.min_gpu_count is not None:
        if count >= m.min_gpu_count:
            t.hold("min_gpu_count", f"{plural(count, 'GPU')} (needs at least {m.min_gpu_count})")
        else:
            t.miss(f"needs at least {plural(m.min_gpu_count, 'GPU')}, this machine has {count}")
    elif m.gpu_count is not None:
        if count == m.gpu_count:
            t.hold("gpu_count", f"{plural(count, 'GPU')} (needs exactly {m.gpu_count})")
        else:
            t.miss(f"needs exactly {plural(m.gpu_count, 'GPU')}, this machine has {count}")
    if count < _per_node(profile):
        t.miss(f"tensor parallel {_per_node(profile)} on this node, but {count} GPUs visible")


def _match_gpus(t: _Tally, profile: Profile, snap: dict[str, Any], group: list[dict[str, Any]]) -> None:
    m = profile.match
    if m.compute_capability:
        ccs = sorted({cc_str(g) or "unknown" for g in group})
        if all(cc in m.compute_capability for cc in ccs):
            t.hold("compute_capability", f"SM {', '.join(ccs)}")
        else:
            t.miss(f"needs SM {' or '.join(m.compute_capability)}, the GPUs are SM {', '.join(ccs)}")
    if m.gpu_name is not None:
        pattern = re.compile(m.gpu_name, re.IGNORECASE)
        names = sorted({gpu_label(g) for g in group})
        if all(pattern.search(g.get("name") or "") for g in group):
            # a longer pattern is a more specific one ("Max-Q" vs "RTX PRO 6000")
            t.hold("gpu_name", f"GPU name {', '.join(names)} matches {m.gpu_name!r}", min(len(m.gpu_name), 40) / 100)
        else:
            t.miss(f"GPU name must match {m.gpu_name!r}, found {', '.join(names)}")
    if m.interconnect != "any":
        found = interconnect(snap, group)
        if found == m.interconnect:
            t.hold("interconnect", f"{found} interconnect")
        else:
            t.miss(f"needs {m.interconnect} between the GPUs, found {found}")


def match_profile(snap: dict[str, Any], profile: Profile) -> ProfileMatch:
    """How well one profile fits the machine in the snapshot, with the reasons."""
    t = _Tally()
    m = profile.match
    gpus = visible_gpus(snap)
    arch = (snap.get("host") or {}).get("arch")
    if m.arch != "any":
        if arch == m.arch:
            t.hold("arch", f"{arch} host")
        else:
            t.miss(f"needs an {m.arch} host, this one is {arch}")
    if m.cpu_only:
        on_bus = (snap.get("host") or {}).get("nvidia_pci_gpus") or 0
        if gpus:
            t.miss(f"CPU-only profile, but this machine has {plural(len(gpus), 'NVIDIA GPU')}")
        elif on_bus:
            t.miss(f"CPU-only profile, but {plural(on_bus, 'NVIDIA GPU')} sit on the PCI bus (driver not loaded)")
        else:
            t.hold("cpu_only", "no NVIDIA GPU visible: CPU-only profile")
        return ProfileMatch(profile, t.ok, t.score, tuple(t.reasons))
    if not gpus:
        t.miss("needs NVIDIA GPUs, none visible" + ("" if snap.get("driver") else " (NVML did not start)"))
        return ProfileMatch(profile, False, t.score, tuple(t.reasons))
    _match_count(t, profile, len(gpus))
    group = gpus[:max(1, min(len(gpus), m.gpu_count or _per_node(profile)))]
    _match_gpus(t, profile, snap, group)
    return ProfileMatch(profile, t.ok, t.score, tuple(t.reasons))


def rank_profiles(snapshot: dict[str, Any], profiles: list[Profile]) -> list[ProfileMatch]:
    """Every profile, best first: matching ones by specificity, then the near misses."""
    matches = [match_profile(snapshot, p) for p in profiles]
    return sorted(matches, key=lambda x: (not x.matched, -x.score, not x.profile.verified, x.name))


def best_profile(snapshot: dict[str, Any], profiles: list[Profile]) -> ProfileMatch | None:
    """The best matching profile (with its reasons), or None when no profile matches."""
    ranked = rank_profiles(snapshot, profiles)
    return ranked[0] if ranked and ranked[0].matched else None


def no_gpu_fix(snap: Snapshot, rules: Rules) -> str:
    """Both roads for a machine without a usable NVIDIA GPU: the driver, else the runbook demo."""
    host = snap.get("host") or {}
    out_of_scope = rules.out_of_scope(host)
    if out_of_scope:
        return f"{out_of_scope}: use a Linux machine with NVIDIA GPUs (SM 9.0, 10.x or 12.x)"
    on_bus = host.get("nvidia_pci_gpus")
    found = f" (it found {on_bus})" if isinstance(on_bus, int) and on_bus else ""
    gpu_road = (f"if `lspci | grep -i nvidia` lists NVIDIA GPUs{found}: {rules.driver_install_hint} "
                f"(in a container: --gpus all with the NVIDIA Container Toolkit)")
    arch = host.get("arch")
    if arch in rules.demo_arches:
        return (f"{gpu_road}; otherwise run the runbook demo: `dsv4setup up --profile {rules.demo_profile}` "
                f"({DEMO_NOTICE})")
    return (f"{gpu_road}; otherwise this {arch} machine is out of scope: the CPU demo "
            f"(--profile {rules.demo_profile}) runs on {', '.join(rules.demo_arches)} only")
