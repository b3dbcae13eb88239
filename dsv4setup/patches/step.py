"""patches: apply the profile's vLLM patches (patches/index.yaml) to the serving venv, verified.

The postcondition reads the installed files, not the state file: a reinstall of vLLM puts the
wheel's pristine files back, the next `up` sees the patch as applicable (drift) and applies it
again. A listed fix that is already upstream in the installed vLLM counts as done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsv4setup.core.errors import DsvError, StepError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.core.fsutil import stat_key
from dsv4setup.engine import RunContext, Step
from dsv4setup.patches.apply import PatchConflictError, apply_patches
from dsv4setup.patches.manifest import Manifest, load_manifest
from dsv4setup.patches.outputs import PatchesOutputs
from dsv4setup.patches.status import PatchReport, check_patches, reinstall_fix
from dsv4setup.patches.target import Target, default_target, find_target
from dsv4setup.vllm.outputs import VllmOutputs


def step_target(ctx: RunContext) -> Target:
    """The vLLM the vllm step installed (its site-packages output), else the workdir's serving venv."""
    vllm = ctx.outputs(VllmOutputs)
    site = Path(vllm.site_packages) if vllm else None
    return find_target(site) if site and site.is_dir() else default_target(ctx.workdir)


def profile_patches(ctx: RunContext, manifest: Manifest) -> list[str]:
    ids = list(ctx.profile.patches)
    unknown = [i for i in ids if i not in manifest.by_id]
    if unknown:
        raise StepError(f"profile {ctx.profile.name} lists unknown patch id(s): {', '.join(unknown)}",
                        fix=f"known patch ids: {', '.join(manifest.ids)} (see {manifest.path}); "
                             f"fix the profile's `patches` list")
    return ids


def applied_diffs(reports: list[PatchReport]) -> dict[str, str | None]:
    """Per patch id, the sha256 of the one diff in effect for this vLLM version (None: upstream has the fix).

    The manifest may hold one diff per vLLM version; a record of what runs names only the one that took effect.
    """
    return {r.id: r.diff.sha256 if r.diff and r.status == "applied" else None for r in reports}


def _manifest_stats(manifest: Manifest) -> list[list[int] | None]:
    return [stat_key(p) for p in (manifest.path, *(d.path for patch in manifest.patches for d in patch.diffs))]


def summary(reports: list[PatchReport]) -> str:
    return ", ".join(f"{r.id} {r.status}" for r in reports)


class PatchesStep(Step):
    name = "patches"
    description = "apply the profile's vLLM patches and verify them against the wheel's RECORD"
    needs = ("vllm",)
    Outputs = PatchesOutputs

    def __init__(self, manifest_path: Path | None = None) -> None:
        self._manifest_path = manifest_path  # None: the shipped patches/index.yaml
        self._loaded: tuple[Manifest, list[list[int] | None]] | None = None

    def manifest(self) -> Manifest:
        """The manifest, parsed once per `up` (inputs, check and run read it): parsed again only when
        index.yaml or a diff it names changed since."""
        if self._loaded is not None and self._loaded[1] == _manifest_stats(self._loaded[0]):
            return self._loaded[0]
        manifest = load_manifest(self._manifest_path)
        self._loaded = (manifest, _manifest_stats(manifest))
        return manifest

    def not_applicable(self, ctx: RunContext) -> str | None:
        return None if ctx.profile.patches else "the profile lists no patches"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        manifest = self.manifest()
        diffs = {pid: [d.sha256 for d in manifest.by_id[pid].diffs] if pid in manifest.by_id else None
                 for pid in ctx.profile.patches}
        return {"patches": list(ctx.profile.patches), "diff_sha256": diffs,
                "vllm": f"{ctx.profile.vllm.package}=={ctx.profile.vllm.version}"}

    def is_done(self, ctx: RunContext) -> Finding:
        manifest = self.manifest()
        try:
            ids = profile_patches(ctx, manifest)
            target = step_target(ctx)
        except DsvError as exc:
            return postcondition(False, exc.message)
        reports = check_patches([manifest.get(i) for i in ids], target)
        pending = [r for r in reports if not r.satisfied]
        if pending:
            return postcondition(False, "not in effect: " + summary(pending))
        return postcondition(True, f"{target.distribution} {target.version}: {summary(reports)}")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        manifest = self.manifest()
        ids = profile_patches(ctx, manifest)
        target = step_target(ctx)
        log = ctx.require_log()
        ctx.progress(f"checking {len(ids)} patch(es) against {target.distribution} {target.version} in {target.root}")
        reports = check_patches([manifest.get(i) for i in ids], target)
        for report in reports:
            log.line(f"{report.id}: {report.status}: {report.detail}")
        blocked = [r for r in reports if r.status == "not-applicable"]
        if blocked:
            raise StepError("patch(es) the profile needs cannot take effect on "
                            f"{target.distribution} {target.version}: "
                            + "; ".join(f"{r.id}: {r.detail}" for r in blocked),
                            fix=f"install the vLLM version the profile pins ({ctx.profile.vllm.package}=="
                                 f"{ctx.profile.vllm.version}) with `dsv4setup up --redo vllm`, or drop these ids "
                                 f"from the profile's patches")
        try:

            def log_and_report(message: str) -> None:
                log.line(message)
                ctx.progress(message)

            result = apply_patches(manifest, target, ids, log=log_and_report)
        except PatchConflictError as exc:
            raise StepError(exc.message, fix=reinstall_fix(target)) from None
        except DsvError as exc:
            raise StepError(exc.message, fix=exc.fix) from None
        return {"target": str(target.root), "vllm_version": target.version,
                "applied": [r.id for r in result.reports if r.status == "applied"],
                "upstream": [r.id for r in result.reports if r.status == "upstream"],
                "diff_sha256": applied_diffs(result.reports),
                "changed": result.changed, "backup_dir": str(target.backup_dir)}


STEP = PatchesStep
