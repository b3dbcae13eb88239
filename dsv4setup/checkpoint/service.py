"""Lint a checkpoint directory or a hub repo, optionally write the config fix; the JSON document.

Used by `dsv4setup checkpoint lint`, the checkpoint step and `doctor --model REPO`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from dsv4setup.checkpoint.fix import FileReader, FixResult, local_reader, write_config_copy
from dsv4setup.checkpoint.lint import LintReport, lint
from dsv4setup.checkpoint.meta import CheckpointMeta, read_local
from dsv4setup.checkpoint.rules import load_rules
from dsv4setup.core.errors import UsageError
from dsv4setup.core.finding import Finding
from dsv4setup.hub.access import HubError

LINT_SCHEMA = "dsv4setup.checkpoint/2"
REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[^\s@]+)?$")


@dataclass(frozen=True)
class Target:
    text: str
    kind: Literal["local", "remote"]
    path: Path | None = None
    repo: str | None = None
    revision: str | None = None


def parse_target(text: str) -> Target:
    """An existing directory is local; ORG/NAME[@REV] is a hub repo; anything else is a usage error."""
    path = Path(text).expanduser()
    if path.is_dir():
        if not any(path.glob("config.json")) and not any(path.glob("*.safetensors*")):
            raise UsageError(f"{path.absolute()} is not a checkpoint: it has no config.json and no *.safetensors "
                             "files", fix="give the model directory (the one with config.json and the shards), "
                                           "or a Hugging Face repo id ORG/NAME[@REVISION]")
        return Target(text, "local", path=path.absolute())
    if path.exists():
        raise UsageError(f"{text} is a file: give the checkpoint directory (the one with config.json)",
                         fix=f"dsv4setup checkpoint lint {path.absolute().parent}")
    if REPO_RE.match(text):
        repo, _, revision = text.partition("@")
        return Target(text, "remote", repo=repo, revision=revision or "main")
    raise UsageError(f"{text}: no such directory, and not a repo id (ORG/NAME or ORG/NAME@REVISION)",
                     fix="give a checkpoint directory or a Hugging Face repo id")


@dataclass
class LintOutcome:
    target: Target
    meta: CheckpointMeta
    report: LintReport
    vllm_version: str
    fix: FixResult | None = None


def read_target(target: Target) -> tuple[CheckpointMeta, FileReader]:
    if target.kind == "local":
        assert target.path is not None
        return read_local(target.path), local_reader(target.path)
    from dsv4setup.checkpoint.remote import read_remote, remote_reader

    assert target.repo is not None and target.revision is not None
    meta = read_remote(target.repo, target.revision)
    return meta, remote_reader(target.repo, meta.commit or target.revision, meta.files)


def run_lint(target: Target, *, vllm_version: str | None = None, expect_mtp: bool = True,
             fix_dir: Path | None = None) -> LintOutcome:
    """Read the metadata, lint it, and when fix_dir is given and a list needs fixing, write the copy there."""
    rules = load_rules()
    version = vllm_version or rules.pinned_vllm
    meta, reader = read_target(target)
    report = lint(meta, rules=rules, vllm_version=version, expect_mtp=expect_mtp, target=target.text)
    outcome = LintOutcome(target, meta, report, version)
    if fix_dir is not None and report.ignore_fixes and meta.config is not None:
        outcome.fix = write_config_copy(fix_dir, meta.config, report.ignore_fixes, reader, target.text)
    return outcome


def lint_doc(outcome: LintOutcome) -> dict[str, Any]:
    """The `dsv4setup.checkpoint/2` document (see schemas/checkpoint.schema.json)."""
    t, meta, report = outcome.target, outcome.meta, outcome.report
    return {
        "schema": LINT_SCHEMA,
        "ok": report.ok,
        "target": t.text,
        "source": {"kind": t.kind, "path": str(t.path) if t.path else None, "repo": t.repo,
                   "revision": t.revision, "commit": meta.commit},
        "vllm_version": outcome.vllm_version,
        "checks": [c.to_dict() for c in report.checks],
        "mtp": report.mtp.to_dict() if report.mtp else None,
        "stats": report.stats,
        "ignore_fixes": [f.to_dict() for f in report.ignore_fixes],
        "fix": outcome.fix.to_dict() if outcome.fix else None,
    }


def remote_lint_checks(repo: str, revision: str = "main", *, area: str = "checkpoint") -> list[Finding]:
    """The lint of a hub repo (headers only), before anything is downloaded, as findings `<area>.<check>`
    (doctor asks for its `model` area).

    Hub failures (not found, gated, offline) come back as one failed `<area>.remote` finding
    instead of an exception, so doctor can show them beside its other findings.
    """
    try:
        outcome = run_lint(Target(f"{repo}@{revision}", "remote", repo=repo, revision=revision))
    except HubError as exc:
        return [Finding(f"{area}.remote", "fail", exc.message, exc.fix)]
    return [replace(c, id=f"{area}.{c.id.split('.', 1)[1]}") for c in outcome.report.checks]
