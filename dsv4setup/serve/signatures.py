"""Known failures: signatures in vLLM's output (data in dsv4setup/known_failures.yaml).

Each is a `Finding` (status fail: `summary` says what it means, `fix` what to do, `command` the
dsv4setup command that applies the fix) plus the pattern that recognises it.
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from dsv4setup.core.finding import Finding
from dsv4setup.core.resources import package_file

KNOWN_FAILURES_FILE = package_file("known_failures.yaml")


@dataclass(frozen=True)
class KnownFailure:
    finding: Finding  # what the failure means and its fix; its command applies the fix (the engine adds --workdir)
    pattern: re.Pattern[str]
    min_count: int = 1
    example: str | None = None
    sets: tuple[str, ...] = ()  # KEY=VALUE overrides that apply the fix
    redo: str | None = None  # or a step to re-run

    @property
    def id(self) -> str:
        return self.finding.id


def fix_command(sets: tuple[str, ...], redo: str | None) -> str | None:
    """The command that applies a known failure's fix, when its fix is a command."""
    if sets:
        return shlex.join(profile_set_command(*sets))
    if redo:
        return shlex.join(["dsv4setup", "up", "--redo", redo, "--yes"])
    return None


def profile_set_command(*items: str) -> list[str]:
    return ["dsv4setup", "profile", "set", *items]


@dataclass(frozen=True)
class FailureMatch:
    failure: KnownFailure
    excerpt: str  # the matched text, first line only, shortened


def load_known_failures(path: Path = KNOWN_FAILURES_FILE) -> tuple[KnownFailure, ...]:
    """Read and compile the table; a broken entry is a bug in the shipped data (ValueError)."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    failures = []
    for i, entry in enumerate(entries):
        try:
            sets, redo = tuple(entry.get("set") or ()), entry.get("redo")
            finding = Finding(entry["id"], "fail", entry["summary"], entry["fix"], fix_command(sets, redo))
            failures.append(KnownFailure(finding, re.compile(entry["pattern"], re.MULTILINE),
                                         min_count=int(entry.get("min_count", 1)), example=entry.get("example"),
                                         sets=sets, redo=redo))
        except (KeyError, TypeError, re.error) as exc:
            raise ValueError(f"{path}: entry {i + 1} is invalid: {exc}") from None
    ids = [f.id for f in failures]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: duplicate ids")
    return tuple(failures)


@lru_cache(maxsize=1)
def known_failures() -> tuple[KnownFailure, ...]:
    return load_known_failures()


def match_failure(text: str, failures: tuple[KnownFailure, ...] | None = None) -> FailureMatch | None:
    """The first known failure whose pattern occurs at least min_count times in text."""
    for failure in known_failures() if failures is None else failures:
        found = list(itertools.islice(failure.pattern.finditer(text), failure.min_count))
        if len(found) >= failure.min_count:
            lines = found[-1].group(0).splitlines()
            return FailureMatch(failure, (lines[0] if lines else "")[:300])
    return None
