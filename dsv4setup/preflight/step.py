"""preflight: the doctor's checks on this machine against the profile; a failed check stops `up`.

It writes the hardware snapshot and the doctor report into the workdir (attach them to bug
reports) and hands the recommendation (serve args, env, MTP k) and the GPU's nvcc target to
later steps. Its postcondition probes the machine again: a driver downgrade or a shrunken
/dev/shm since the last run makes it run (and fail) again.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from dsv4setup.core.errors import StepError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.engine import RunContext, Step
from dsv4setup.preflight.outputs import PreflightOutputs
from dsv4setup.preflight.snapshot import SNAPSHOT_FILE

if TYPE_CHECKING:
    from dsv4setup.hardware.rules import Rules
    from dsv4setup.preflight.report import DoctorReport

REPORT_FILE = "doctor.json"


def _ids(results: list[Any]) -> str:
    return ", ".join(r.id for r in results) or "none"


class PreflightStep(Step):
    name = "preflight"
    description = "GPUs, interconnect, driver, host and toolchain checked against the profile (doctor)"
    Outputs = PreflightOutputs

    def __init__(self, nvml: ModuleType | None = None, rules: Rules | None = None) -> None:
        self.nvml = nvml  # the NVML module; None: pynvml (tests pass a fake)
        self.rules = rules  # None: rules.yaml

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        from dsv4setup.hardware.rules import rules_digest

        # outputs: the layout of this step's outputs (the serve step reads `findings`)
        return {"profile": ctx.profile.document(), "rules": rules_digest(), "outputs": 2}

    def judge(self, ctx: RunContext) -> DoctorReport:
        from dsv4setup.preflight.report import build_report
        from dsv4setup.preflight.snapshot import take_snapshot

        return build_report(take_snapshot(ctx.workdir, nvml=self.nvml), ctx.profile, rules=self.rules,
                            workdir=ctx.workdir, state=ctx.state)

    def is_done(self, ctx: RunContext) -> Finding:
        report = self.judge(ctx)
        if not report.ok:
            return postcondition(False, f"check(s) now failing: {_ids(report.failures)}")
        return postcondition(True, f"{len(report.checks)} checks, none failed (warnings: {_ids(report.warnings)})")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from dsv4setup.core.fsutil import atomic_write_json
        from dsv4setup.preflight.snapshot import save_snapshot

        ctx.progress("probing GPUs (NVML), host and toolchain")
        report = self.judge(ctx)
        log = ctx.require_log()
        snapshot_path = ctx.workdir.root / SNAPSHOT_FILE
        report_path = ctx.workdir.root / REPORT_FILE
        save_snapshot(snapshot_path, report.snapshot)
        atomic_write_json(report_path, report.to_doc())
        for r in report.checks:
            log.line(f"{r.status.upper():4} {r.id}: {r.summary}" + (f"\n     fix: {r.fix}" if r.fix else ""))
        log.line(f"snapshot: {snapshot_path}; report: {report_path}")
        if not report.ok:
            failures = report.failures
            raise StepError(
                f"preflight: {len(failures)} check(s) failed: "
                + "; ".join(f"{r.id}: {r.summary}" for r in failures),
                fix=" | ".join(f"{r.id}: {r.fix}" for r in failures)
                + f" (all checks: `dsv4setup doctor --workdir {ctx.workdir.root}`; report: {report_path})")
        outputs: dict[str, Any] = {"snapshot": str(snapshot_path), "report": str(report_path),
                                   "recommendation": report.recommendation, "findings": report.findings,
                                   "warnings": [r.id for r in report.warnings]}
        arch = self._toolkit_arch(report, ctx)
        if arch is not None:
            outputs["toolkit_arch"] = arch  # read by the toolkit step when toolkit.arch is unset
        return outputs

    def _toolkit_arch(self, report: DoctorReport, ctx: RunContext) -> str | None:
        """The nvcc target of the TP group's GPUs (they are identical, or a check failed)."""
        from dsv4setup.hardware.arch import arch_from_capability
        from dsv4setup.hardware.rules import load_rules
        from dsv4setup.preflight.target import make_ctx

        c = make_ctx(report.snapshot, ctx.profile, self.rules or load_rules())
        return arch_from_capability(c.cc) if c.cc else None


STEP = PreflightStep
