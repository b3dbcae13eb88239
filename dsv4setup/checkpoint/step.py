"""checkpoint: lint the downloaded checkpoint's metadata and stop `up` on a failure.

Reads config.json, the index and every shard header (a few MB). Ignore lists written in
on-disk names are corrected into a config copy at `<workdir>/checkpoint-config/` and the
output `hf_config_path` points serving at it (`vllm serve --hf-config-path`); the downloaded
files are never edited. The postcondition re-runs the lint: it is cheap and it is the truth.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from dsv4setup.checkpoint.fix import CONFIG_DIR_NAME, local_reader, read_fix_note, write_config_copy
from dsv4setup.checkpoint.outputs import CheckpointOutputs
from dsv4setup.checkpoint.service import LintOutcome, Target, run_lint
from dsv4setup.core.errors import StepError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.core.workdir import Workdir
from dsv4setup.download.outputs import DownloadOutputs
from dsv4setup.engine import RunContext, Step
from dsv4setup.profiles.paths import checkpoint_dir
from dsv4setup.vllm.outputs import VllmOutputs


def config_copy_dir(workdir: Workdir) -> Path:
    return workdir.root / CONFIG_DIR_NAME


def _checkpoint_path(ctx: RunContext) -> Path:
    download = ctx.outputs(DownloadOutputs)
    return Path(download.path) if download else checkpoint_dir(ctx.profile, ctx.workdir)


def _download_revision(ctx: RunContext) -> str | None:
    download = ctx.outputs(DownloadOutputs)
    return download.revision if download else None


def _vllm_version(ctx: RunContext) -> str:
    vllm = ctx.outputs(VllmOutputs)
    return vllm.version if vllm else ctx.profile.vllm.version


def _expect_mtp(ctx: RunContext) -> bool:
    return ctx.profile.model.mtp and ctx.profile.spec.num_speculative_tokens > 0


class CheckpointStep(Step):
    name = "checkpoint"
    description = "Lint the checkpoint: MTP block declared, present, head/embedding, dtypes, ignore list, shards"
    needs = ("download", "vllm")  # lints against the installed vLLM's version (VllmOutputs)
    Outputs = CheckpointOutputs

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        from dsv4setup.checkpoint.rules import RULES_FILE

        return {"path": str(_checkpoint_path(ctx)), "revision": _download_revision(ctx),
                "vllm_version": _vllm_version(ctx), "expect_mtp": _expect_mtp(ctx),
                "rules": hashlib.sha256(RULES_FILE.read_bytes()).hexdigest()[:16]}

    def _lint(self, ctx: RunContext) -> LintOutcome:
        path = _checkpoint_path(ctx)
        return run_lint(Target(str(path), "local", path=path), vllm_version=_vllm_version(ctx),
                        expect_mtp=_expect_mtp(ctx))

    def is_done(self, ctx: RunContext) -> Finding:
        outcome = self._lint(ctx)
        report = outcome.report
        if not report.ok:
            return postcondition(False, "lint fails: " + ", ".join(c.id for c in report.failed()))
        copy_dir = config_copy_dir(ctx.workdir)
        if report.ignore_fixes:
            note = read_fix_note(copy_dir)
            wanted = [f.to_dict() for f in report.ignore_fixes]
            if note is None or note.get("changes") != wanted or not (copy_dir / "config.json").is_file():
                return postcondition(False, f"the corrected config copy in {copy_dir} is missing or stale")
        counts = Counter(c.status for c in report.checks)
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if report.ignore_fixes:
            detail += f"; serving uses the corrected config in {copy_dir}"
        return postcondition(True, f"lint: {detail}")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        ctx.progress("reading config.json, the index and the shard headers")
        outcome = self._lint(ctx)
        report, meta = outcome.report, outcome.meta
        log = ctx.require_log()
        log.line(f"lint of {meta.source} against vLLM {outcome.vllm_version} (expect MTP: {_expect_mtp(ctx)})")
        for check in report.checks:
            log.line(f"{check.status.upper():5} {check.id}: {check.summary}" + (f"\n      fix: {check.fix}"
                                                                               if check.fix else ""))
        if not report.ok:
            failed = report.failed()
            raise StepError("checkpoint lint failed: " + "; ".join(f"{c.id}: {c.summary}" for c in failed),
                            fix=" | ".join(dict.fromkeys(c.fix for c in failed if c.fix)) or None)
        copy_dir = config_copy_dir(ctx.workdir)
        hf_config_path: str | None = None
        if report.ignore_fixes and meta.config is not None:
            path = _checkpoint_path(ctx)
            fix = write_config_copy(copy_dir, meta.config, report.ignore_fixes, local_reader(path), str(path))
            hf_config_path = str(fix.hf_config_path)
            log.line(f"wrote the corrected config copy: {fix.hf_config_path} ({', '.join(fix.files)})")
            log.line("note: vLLM 0.33 reads the MTP draft's config from the weights directory unless the "
                     "hf_config_path patch is applied (see `dsv4setup patches status`)")
        elif read_fix_note(copy_dir) is not None:
            shutil.rmtree(copy_dir)  # ours, and no longer needed: serving must not pick it up
            log.line(f"removed the stale config copy {copy_dir}")
        counts = Counter(c.status for c in report.checks)
        return {"path": str(meta.source), "vllm_version": outcome.vllm_version, "ok": True,
                "counts": dict(counts), "warnings": [c.id for c in report.checks if c.status == "warn"],
                "mtp": report.mtp.to_dict() if report.mtp else None, "hf_config_path": hf_config_path,
                "stats": report.stats}


STEP = CheckpointStep
