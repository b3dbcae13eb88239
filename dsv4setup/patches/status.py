"""The status of each patch on a target: applied, applicable, upstream, not-applicable or conflict.

Each report is also a `Finding` (`PatchReport.finding`): applied and upstream pass, applicable
warns (with the command that applies it), not-applicable is skipped, a conflict fails (with the
reinstall that brings the pristine files back).

A file is pristine when its sha256 equals the wheel's RECORD, patched when reversing our diff
gives back exactly the RECORD hash, and foreign-modified otherwise. Without a RECORD (a source
tree) the diff itself decides: it applies forward (needed) or in reverse (applied).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from dsv4setup.core.finding import Finding, Status
from dsv4setup.patches.backups import Backups
from dsv4setup.patches.difftool import run_diff
from dsv4setup.patches.manifest import DiffFile, Patch, Probe
from dsv4setup.patches.target import Target, sha256_bytes

PatchStatus = Literal["applied", "applicable", "upstream", "not-applicable", "conflict"]
STATUSES: tuple[PatchStatus, ...] = ("applied", "applicable", "upstream", "not-applicable", "conflict")
FINDING_STATUS: dict[PatchStatus, Status] = {"applied": "pass", "upstream": "pass", "applicable": "warn",
                                              "not-applicable": "skip", "conflict": "fail"}
ProbeState = Literal["fixed", "needed", "unrelated", "absent"]
Reader = Callable[[str], bytes | None]


@dataclass(frozen=True)
class ProbeResult:
    state: ProbeState
    file: str | None = None  # the file that decided


@dataclass(frozen=True)
class PatchReport:
    patch: Patch
    status: PatchStatus
    detail: str
    files: tuple[str, ...] = ()
    diff: DiffFile | None = None
    staged: dict[str, bytes] = field(default_factory=dict, repr=False)  # post-patch bytes (applicable)
    originals: dict[str, bytes] = field(default_factory=dict, repr=False)  # pre-patch bytes (applied)
    fix: str | None = None  # what to do about it (applicable, conflict)
    command: str | None = None  # the dsv4setup command that does it

    @property
    def id(self) -> str:
        return self.patch.id

    @property
    def finding(self) -> Finding:
        """This report as the one verdict type: the patch id, its status as pass/warn/skip/fail, the detail."""
        return Finding(self.id, FINDING_STATUS[self.status], self.detail, self.fix, self.command)

    @property
    def satisfied(self) -> bool:
        """The fix is in effect: applied by us, or already in this vLLM."""
        return self.status in ("applied", "upstream")


def evaluate_probe(probe: Probe, read: Reader) -> ProbeResult:
    texts = [(rel, data.decode("utf-8", errors="replace")) for rel in probe.files
             if (data := read(rel)) is not None]
    if not texts:
        return ProbeResult("absent")
    for rel, text in texts:
        if all(re.search(rx, text, re.M) for rx in probe.fixed):
            return ProbeResult("fixed", rel)
    for rel, text in texts:
        if all(re.search(rx, text, re.M) for rx in probe.needed):
            return ProbeResult("needed", rel)
    return ProbeResult("unrelated", texts[0][0])


def _label(target: Target) -> str:
    return f"{target.distribution or 'vLLM'} {target.version or '(unknown version)'}"


def _check_upstream(patch: Patch, target: Target) -> PatchReport:
    probe = evaluate_probe(patch.spec.probe, target.read)
    files = tuple(patch.spec.probe.files)
    if probe.state == "absent":
        return PatchReport(patch, "not-applicable", f"none of {', '.join(files)} exists in {_label(target)}", files)
    if probe.state == "fixed":
        assert probe.file is not None
        return PatchReport(patch, "upstream", f"present in {_label(target)} (probe matches)",
                           (probe.file,))
    verified = ", ".join(patch.spec.verified_in) or "a newer release"
    return PatchReport(patch, "not-applicable",
                       f"MISSING in {_label(target)} ({probe.file} does not match the probe) and dsv4setup ships "
                       f"no diff for it: use a vLLM that has it (checked in {verified})", (probe.file or files[0],))


def _fits(diff: DiffFile, target: Target) -> bool:
    contents = {rel: target.read(rel) for rel in diff.files}
    if any(data is None for data in contents.values()):
        return False
    present = {rel: data for rel, data in contents.items() if data is not None}
    return run_diff(diff.path, present).ok or run_diff(diff.path, present, reverse=True).ok


def select_diff(patch: Patch, target: Target) -> DiffFile | None:
    """The diff for the target's vLLM version; without a known version, the first that fits."""
    if target.version is not None:
        found = patch.variant_for(target.version, target.distribution)
        return found[1] if found else None
    return next((diff for _variant, diff in patch.variants() if _fits(diff, target)), None)


def _check_with_record(patch: Patch, target: Target, diff: DiffFile, contents: dict[str, bytes]) -> PatchReport:
    files = diff.files
    record = {rel: target.pristine_sha256(rel) for rel in files}
    modified = [rel for rel in files if sha256_bytes(contents[rel]) != record[rel]]
    if not modified:
        if evaluate_probe(patch.spec.probe, target.read).state == "fixed":
            return PatchReport(patch, "upstream", f"the pristine {_label(target)} already has the fix", files, diff)
        forward = run_diff(diff.path, contents)
        if not forward.ok:
            return PatchReport(patch, "conflict", f"{diff.path.name} does not fit the pristine files of "
                               f"{_label(target)}: {forward.output}", files, diff)
        return PatchReport(patch, "applicable", f"pristine (sha256 = RECORD); {diff.path.name} fits", files, diff,
                           staged=forward.files)
    if len(modified) < len(files):
        pristine = sorted(set(files) - set(modified))
        return PatchReport(patch, "conflict", f"partially patched: {', '.join(pristine)} pristine but "
                           f"{', '.join(modified)} modified", files, diff)
    reverse = run_diff(diff.path, contents, reverse=True)
    if reverse.ok and all(sha256_bytes(reverse.files[rel]) == record[rel] for rel in files):
        return PatchReport(patch, "applied", f"patched: reversing {diff.path.name} gives the RECORD sha256",
                           files, diff, originals=reverse.files)
    return PatchReport(patch, "conflict", f"{', '.join(modified)} modified by something else: sha256 differs from "
                       f"RECORD and the file is not {diff.path.name} applied to the original", files, diff)


def _changed_since_patched(target: Target, contents: dict[str, bytes]) -> list[str]:
    """Files dsv4setup patched (per the backup index) that hold other bytes than it wrote."""
    index = Backups(target).index()
    return [rel for rel, data in contents.items() if rel in index
            and sha256_bytes(data) not in (index[rel].get("patched_sha256"), index[rel].get("original_sha256"))]


def _check_without_record(patch: Patch, target: Target, diff: DiffFile, contents: dict[str, bytes]) -> PatchReport:
    files = diff.files
    fixed = evaluate_probe(patch.spec.probe, target.read).state == "fixed"
    reverse = run_diff(diff.path, contents, reverse=True)
    if reverse.ok and fixed:
        return PatchReport(patch, "applied", f"{diff.path.name} applies in reverse (no RECORD here)", files, diff,
                           originals=reverse.files)
    forward = run_diff(diff.path, contents)
    if forward.ok and not fixed:
        return PatchReport(patch, "applicable", f"{diff.path.name} fits (no RECORD here)", files, diff,
                           staged=forward.files)
    if fixed:
        return PatchReport(patch, "upstream", f"{_label(target)} already has the fix (probe matches)", files, diff)
    return PatchReport(patch, "conflict", f"{diff.path.name} fits neither forward nor in reverse: "
                       f"{', '.join(files)} changed by something else: {forward.output}", files, diff)


def _check_diff(patch: Patch, target: Target) -> PatchReport:
    if target.record is None:
        present = {rel: data for rel in patch.spec.files if (data := target.read(rel)) is not None}
        changed = _changed_since_patched(target, present)
        if changed:
            return PatchReport(patch, "conflict", f"{', '.join(changed)} changed since dsv4setup patched it "
                               f"(sha256 differs from {target.backup_dir.name}/index.json)", tuple(changed))
    diff = select_diff(patch, target)
    if diff is None:
        probe = evaluate_probe(patch.spec.probe, target.read)
        if probe.state == "fixed":
            return PatchReport(patch, "upstream", f"{_label(target)} already has the fix (probe matches)",
                               tuple(patch.spec.files))
        ranges = "; ".join(v.versions for v in patch.spec.variants)
        why = (f"NEEDED ({probe.file} has the unfixed code) but" if probe.state == "needed"
               else "the code this fix is about is not there, and")
        return PatchReport(patch, "not-applicable", f"{why} there is no diff for {_label(target)} "
                           f"(diffs exist for {ranges})", tuple(patch.spec.files))
    read = {rel: target.read(rel) for rel in diff.files}
    missing = [rel for rel, data in read.items() if data is None]
    if missing:
        return PatchReport(patch, "not-applicable", f"{', '.join(missing)} not in {_label(target)}", diff.files, diff)
    contents = {rel: data for rel, data in read.items() if data is not None}
    if target.record is not None and all(target.pristine_sha256(rel) for rel in diff.files):
        return _check_with_record(patch, target, diff, contents)
    return _check_without_record(patch, target, diff, contents)


def reinstall_fix(target: Target) -> str:
    """How to get pristine vLLM files back: a forced reinstall (a plain `pip install` of the same
    version keeps the modified files), or a checkout in a source tree."""
    if target.kind == "source-tree":
        return (f"restore the original files in {target.root} (e.g. `git -C {target.root} checkout -- vllm`), "
                f"then run `dsv4setup up` again")
    spec = f"{target.distribution}=={target.version}" if target.distribution and target.version else "vllm"
    python = target.root.parents[2] / "bin" / "python" if len(target.root.parents) > 2 else None
    pip = f"{python} -m pip" if python is not None and python.exists() else "pip"
    return (f"reinstall vLLM into the environment of {target.root} to get pristine files: "
            f"`{pip} install --force-reinstall --no-deps {spec}`, then `dsv4setup up` (it re-applies the patches)")


def _with_fix(report: PatchReport, target: Target) -> PatchReport:
    if report.status == "conflict":
        return replace(report, fix=reinstall_fix(target))
    if report.status == "applicable":
        command = shlex.join(["dsv4setup", "patches", "apply", report.id, "--target", str(target.root)])
        return replace(report, command=command,
                       fix=f"apply it with `{command}`, or run `dsv4setup up` (it applies every patch that fits)")
    return report


def check_patch(patch: Patch, target: Target) -> PatchReport:
    report = _check_diff(patch, target) if patch.is_diff else _check_upstream(patch, target)
    return _with_fix(report, target)


def check_patches(patches: list[Patch], target: Target) -> list[PatchReport]:
    return [check_patch(p, target) for p in patches]
