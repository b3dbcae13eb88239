"""The doctor report: every check, the recommendation, the snapshot they judged.

Extension point: `build_report(..., extra_checks=[...])` appends results computed elsewhere
(e.g. checkpoint checks for `doctor --model REPO`); they count toward `ok` like the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dsv4setup.core.finding import AREAS, Finding, passed, rank, skipped, warned
from dsv4setup.preflight import gpu_checks as gpu
from dsv4setup.preflight import host_checks as host
from dsv4setup.preflight.implied import recommendation
from dsv4setup.preflight.rules import Rules, load_rules
from dsv4setup.preflight.target import Ctx, make_ctx

if TYPE_CHECKING:
    from dsv4setup.profiles.match import ProfileMatch
    from dsv4setup.profiles.model import Profile

DOCTOR_SCHEMA = "dsv4setup.doctor/2"
CheckFn = Callable[[Ctx], Finding]


def host_profile(c: Ctx, matches: Sequence[ProfileMatch]) -> Finding:
    """Does the chosen profile describe this machine? (the match rules of profiles/match.py)"""
    id_ = "host.profile"
    profile = c.target.profile
    if profile is None:
        near = next(iter(matches), None)
        closest = ""
        if near is not None:
            misses = "; ".join(r.removeprefix("no: ") for r in near.reasons if r.startswith("no:"))
            closest = f"; closest: {near.name} ({misses or 'matches, not chosen'})"
        return skipped(id_, f"no profile matches this machine{closest}: judged as a generic GPU deployment "
                            f"(TP={c.target.tensor_parallel_size})")
    from dsv4setup.profiles.match import match_profile

    match = match_profile(c.snap, profile)
    if match.matched:
        return passed(id_, f"profile {profile.name}: {'; '.join(match.reasons) or 'matches any machine'}")
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
        """The `dsv4setup.doctor/2` JSON document."""
        return {"schema": DOCTOR_SCHEMA, "ok": self.ok, "checks": [r.to_dict() for r in self.checks],
                "recommendation": self.recommendation, "snapshot": self.snapshot}


def run_checks(snapshot: dict[str, Any], profile: Profile | None = None, *, rules: Rules | None = None,
               matches: Sequence[ProfileMatch] = (),
               extra_checks: Iterable[Finding] = ()) -> list[Finding]:
    """Every built-in check in a stable order, then `extra_checks`."""
    c = make_ctx(snapshot, profile, rules or load_rules())
    results = [fn(c) for fn in gpu.CHECKS]
    results.append(host_profile(c, matches))
    results += [fn(c) for fn in host.CHECKS]
    return results + list(extra_checks)


def build_report(snapshot: dict[str, Any], profile: Profile | None = None, *, rules: Rules | None = None,
                 matches: Sequence[ProfileMatch] = (),
                 extra_checks: Iterable[Finding] = ()) -> DoctorReport:
    """Judge a snapshot against a profile (None: a generic GPU deployment) and recommend serve settings."""
    rules = rules or load_rules()
    checks = run_checks(snapshot, profile, rules=rules, matches=matches, extra_checks=extra_checks)
    rec = recommendation(make_ctx(snapshot, profile, rules))
    return DoctorReport(checks, rec, snapshot, profile, list(matches))


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
