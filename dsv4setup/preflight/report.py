"""The doctor report: every check, the recommendation, the snapshot they judged.

Extension point: `build_report(..., extra_checks=[...])` appends results computed elsewhere
(e.g. checkpoint checks for `doctor --model REPO`); they count toward `ok` like the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsv4setup.core.finding import AREAS, Finding, failed, passed, rank, warned
from dsv4setup.core.state import State
from dsv4setup.core.workdir import Workdir
from dsv4setup.hardware.facts import visible_gpus
from dsv4setup.hardware.rules import Rules, load_rules
from dsv4setup.preflight import gpu_checks as gpu
from dsv4setup.preflight import host_checks as host
from dsv4setup.preflight.implied import findings, recommended_k
from dsv4setup.preflight.target import Ctx, make_ctx
from dsv4setup.profiles.match import no_gpu_fix
from dsv4setup.profiles.model import DEMO_NOTICE

if TYPE_CHECKING:
    from dsv4setup.profiles.match import ProfileMatch
    from dsv4setup.profiles.model import Profile

DOCTOR_SCHEMA = "dsv4setup.doctor/3"  # /3: `bandwidth` (doctor --bandwidth)
CheckFn = Callable[[Ctx], Finding]


def _no_profile(c: Ctx, matches: Sequence[ProfileMatch], why: str | None) -> Finding:
    """No usable profile: the doctor never answers ok without one."""
    if c.rules.out_of_scope(c.host):
        return failed("host.profile", f"no usable profile: {c.rules.out_of_scope(c.host)}",
                      no_gpu_fix(c.snap, c.rules))
    if not visible_gpus(c.snap):
        return failed("host.profile", f"no usable profile: {why or 'no NVIDIA GPU visible'}",
                      "see driver.present / gpu.present: their fix names both roads (the driver, or the CPU demo)")
    near = next((m for m in matches if not m.profile.demo), None)
    closest = ""
    if near is not None:
        misses = "; ".join(r.removeprefix("no: ") for r in near.reasons if r.startswith("no:"))
        closest = f"; closest shipped profile: {near.name} ({misses or 'matches, not chosen'})"
    fix = ("use GPUs of a supported family (see gpu.architecture), or write a profile for these: start from "
           "`dsv4setup profile show h200-tp2 --json` and pass it with --profile FILE")
    return failed("host.profile", f"no usable profile: {why or 'no profile matches this machine'}{closest}", fix)


def host_profile(c: Ctx, matches: Sequence[ProfileMatch], why_none: str | None = None) -> Finding:
    """Does the chosen profile describe this machine? (the match rules of profiles/match.py)"""
    id_ = "host.profile"
    profile = c.target.profile
    if profile is None:
        return _no_profile(c, matches, why_none)
    from dsv4setup.profiles.match import match_profile

    match = match_profile(c.snap, profile)
    if profile.demo and match.matched:
        return warned(id_, f"profile {profile.name}: {DEMO_NOTICE}",
                      "for DeepSeek-V4-Flash use a Linux machine with NVIDIA GPUs (SM 9.0, 10.x or 12.x)")
    if match.matched:
        kind = " (derived for this machine, not verified)" if profile.derived else ""
        return passed(id_, f"profile {profile.name}{kind}: {'; '.join(match.reasons) or 'matches any machine'}")
    misses = "; ".join(r.removeprefix("no: ") for r in match.reasons if r.startswith("no:"))
    best = next((m.name for m in matches if m.matched), None)
    fix = f"use --profile {best}" if best else "`dsv4setup profile list` shows the profiles and their hardware"
    return warned(id_, f"profile {profile.name} is not for this machine: {misses}", fix)


@dataclass
class DoctorReport:
    checks: list[Finding]
    recommendation: dict[str, Any] | None
    snapshot: dict[str, Any]
    profile: Profile | None = None
    matches: list[ProfileMatch] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)  # what the findings add to serve (preflight outputs)
    bandwidth: dict[str, Any] | None = None  # the link measured by `doctor --bandwidth` (download/bandwidth.py)

    @property
    def demo(self) -> bool:
        return self.profile is not None and self.profile.demo

    @property
    def ok(self) -> bool:
        """False iff a check failed (warnings keep it True)."""
        return not any(r.status == "fail" for r in self.checks)

    @property
    def failures(self) -> list[Finding]:
        return [r for r in self.checks if r.status == "fail"]

    @property
    def warnings(self) -> list[Finding]:
        return [r for r in self.checks if r.status == "warn"]

    def to_doc(self) -> dict[str, Any]:
        """The `dsv4setup.doctor/3` JSON document."""
        return {"schema": DOCTOR_SCHEMA, "ok": self.ok, "demo": self.demo,
                "notice": DEMO_NOTICE if self.demo else None, "checks": [r.to_dict() for r in self.checks],
                "recommendation": self.recommendation, "bandwidth": self.bandwidth, "snapshot": self.snapshot}


@dataclass(frozen=True)
class Judged:
    """What a report is judged against besides the snapshot: the profile and how it was chosen."""

    profile: Profile | None = None
    matches: Sequence[ProfileMatch] = ()
    why_no_profile: str | None = None  # why there is no usable profile (profile None)
    notes: Sequence[str] = ()  # what the choice of profile means (derived: how; the demo: what it is)


def run_checks(snapshot: dict[str, Any], judged: Judged = Judged(), *, rules: Rules | None = None,
               extra_checks: Iterable[Finding] = ()) -> list[Finding]:
    """Every built-in check in a stable order, then `extra_checks`."""
    c = make_ctx(snapshot, judged.profile, rules or load_rules())
    results = [fn(c) for fn in gpu.CHECKS]
    results.append(host_profile(c, judged.matches, judged.why_no_profile))
    results += [fn(c) for fn in host.CHECKS]
    return results + list(extra_checks)


def recommendation(c: Ctx, found: dict[str, Any], workdir: Workdir, state: State,
                   notes: Sequence[str]) -> dict[str, Any] | None:
    """What `up` will serve with: the serve step's own argv and env (serve/command.py) with these findings."""
    profile = c.target.profile
    if profile is None:
        return None
    from dsv4setup.serve.command import render_serve

    command = render_serve(profile, workdir, state, findings=found)
    return {"profile": profile.name, "derived": profile.derived, "verified": profile.verified, "demo": profile.demo,
            "preset": profile.preset, "notes": list(notes) or ([DEMO_NOTICE] if profile.demo else []),
            "tensor_parallel_size": c.target.tensor_parallel_size, "num_speculative_tokens": recommended_k(c),
            "serve_args": command.argv[3:], "env": command.env}


def build_report(snapshot: dict[str, Any], judged: Judged | Profile | None = None, *, rules: Rules | None = None,
                 extra_checks: Iterable[Finding] = (), workdir: Workdir | None = None,
                 state: State | None = None) -> DoctorReport:
    """Judge a snapshot against a profile (None: no usable profile, which fails host.profile) and recommend
    what to serve with. `workdir`/`state`: where and after which steps (the serve paths and
    --hf-config-path); default: the snapshot's workdir, no steps run."""
    from dsv4setup.profiles.model import Profile

    if not isinstance(judged, Judged):
        judged = Judged(judged if isinstance(judged, Profile) else None)
    rules = rules or load_rules()
    checks = run_checks(snapshot, judged, rules=rules, extra_checks=extra_checks)
    c = make_ctx(snapshot, judged.profile, rules)
    found = findings(c)
    where = workdir or Workdir(Path((snapshot.get("host") or {}).get("workdir") or ".").absolute())
    rec = recommendation(c, found, where, state or State(), judged.notes)
    return DoctorReport(checks, rec, snapshot, judged.profile, list(judged.matches), found)


def ordered_for_display(checks: Sequence[Finding]) -> list[tuple[str, list[Finding]]]:
    """Areas with their checks, the area holding the worst result first; inside, worst first."""
    areas: dict[str, list[Finding]] = {}
    for r in checks:
        areas.setdefault(r.area, []).append(r)
    for results in areas.values():
        results.sort(key=lambda r: rank(r.status))

    def area_key(item: tuple[str, list[Finding]]) -> tuple[int, int]:
        name, results = item
        return rank(results[0].status), AREAS.index(name) if name in AREAS else len(AREAS)

    return sorted(areas.items(), key=area_key)
