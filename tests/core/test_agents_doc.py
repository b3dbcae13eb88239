"""AGENTS.md (and README.md, docs/*.md) stay true: every command line they show exists, every check and
known-failure id has a row, every schema version they name is published."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from dsv4setup.cli import main
from dsv4setup.core.jsonschemas import schemas_by_id
from tests.conftest import REPO_ROOT

DOCS = [REPO_ROOT / "AGENTS.md", REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"[\[\]{}<>|\\]|\.\.\.")


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for snippet in re.findall(r"`(dsv4setup [^`]+)`", doc.read_text()):
            found.append((doc.relative_to(REPO_ROOT).as_posix(), snippet))
    return sorted(set(found))


def split_command(snippet: str) -> tuple[list[str], list[str]]:
    """(words to run with --help, long options to find in that help)."""
    tokens = shlex.split(snippet.replace("\\|", "|"))[1:]
    words, options = [], []
    for token in tokens:
        if token.startswith("--"):
            options.append(token.split("=")[0])
        elif token.startswith("-") or PLACEHOLDER.search(token):
            continue
        elif not options:
            words.append(token)
    return words, options


@pytest.mark.parametrize("where, snippet", documented_commands())
def test_documented_command_exists(where: str, snippet: str, capsys: pytest.CaptureFixture[str]) -> None:
    words, options = split_command(snippet)
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    help_text = capsys.readouterr().out
    assert info.value.code == 0, f"{where}: `{snippet}`"
    for option in options:
        assert option in help_text, f"{where}: `{snippet}`: {option} is not an option of `dsv4setup {' '.join(words)}`"


def ids_in(paths: list[Path], pattern: str) -> set[str]:
    return {m for p in paths for m in re.findall(pattern, p.read_text())}


def check_ids() -> set[str]:
    """Every check id doctor, preflight and checkpoint lint can report (scanned from their sources)."""
    pkg = REPO_ROOT / "dsv4setup"
    probes = {"nvml.py", "host_facts.py", "toolchain.py", "snapshot.py"}  # read NVML fields, not check ids
    checks = [p for p in (pkg / "preflight").glob("*.py") if p.name not in probes]
    ids = ids_in(checks, r'"((?:gpu|topology|host|driver|toolkit|python|vllm)\.[a-z_]+)"')
    return ids | ids_in(list((pkg / "checkpoint").glob("*.py")), r'"(checkpoint\.[a-z_]+)"')


def test_every_check_id_has_a_row() -> None:
    ids = check_ids()
    assert len(ids) > 30
    agents = (REPO_ROOT / "AGENTS.md").read_text()
    assert [i for i in sorted(ids) if f"`{i}`" not in agents] == []


def test_every_known_failure_id_has_a_row() -> None:
    known = yaml.safe_load((REPO_ROOT / "dsv4setup" / "known_failures.yaml").read_text())
    entries = known if isinstance(known, list) else known["failures"]
    ids = {e["id"] for e in entries}
    readiness = REPO_ROOT / "dsv4setup" / "serve" / "readiness.py"
    ids |= ids_in([readiness], r'"(serve-stall|serve-ready-timeout|engine-dead)"')
    ids |= ids_in([REPO_ROOT / "dsv4setup" / "cluster" / "step.py"], r'known_failure="([a-z-]+)"')
    assert {"cluster-node-missing", "cluster-node-mismatch"} <= ids
    assert len(ids) >= 20
    agents = (REPO_ROOT / "AGENTS.md").read_text()
    assert [i for i in sorted(ids) if f"`{i}`" not in agents] == []


def test_every_named_schema_is_published() -> None:
    named = ids_in([REPO_ROOT / "AGENTS.md"], r"`(dsv4setup\.[a-z-]+/\d+)`")
    assert named and named <= set(schemas_by_id())
