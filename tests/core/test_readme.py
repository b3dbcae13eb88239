"""README.md's commands are the ones that work: read from README itself, checked against CI and the real CLI.

The set-up section holds exactly two commands (install + doctor; `up --profile NAME --yes`), the demo
section the cpu-tiny `up`, the test section the test command. The install line must be what
`.ci/run` does (a fresh venv, activated, `pip install -e '.[test]'`), the test command what `.ci/run`
runs last; every `dsv4setup ...` parses with the real click tree (the hint test's `parse_problem`);
every profile named is one `dsv4setup profile list --json` lists. README stays short (its reference
material lives in docs/), and its links and the docs' links lead to files that exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.core.test_hint_commands import parse_problem

README = REPO_ROOT / "README.md"
CI = REPO_ROOT / ".ci" / "run"
MAX_LINES = 120
PLACEHOLDER_PROFILE = "NAME"  # "the profile `doctor` recommends"


def bash_commands(section: str) -> list[str]:
    """The commands in the ```bash blocks of README's `## section` (comments and blank lines left out)."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"README.md has no section `## {section}`"
    blocks = re.findall(r"^```bash\n(.*?)^```", match.group(1), flags=re.M | re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ci_commands() -> list[str]:
    return [line.strip() for line in CI.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


SETUP = bash_commands("Set up (two commands)")
DEMO = bash_commands("The demo, without a GPU")
TESTS = bash_commands("Run the tests")


def dsv4setup_commands() -> list[str]:
    return [part.strip() for line in SETUP + DEMO for part in line.split("&&") if part.strip().startswith("dsv4setup ")]


def test_the_sections_hold_the_commands_a_newcomer_runs() -> None:
    assert len(SETUP) == 2, SETUP
    assert SETUP[0].endswith("&& dsv4setup doctor"), SETUP[0]
    assert SETUP[1] == f"dsv4setup up --profile {PLACEHOLDER_PROFILE} --yes"
    assert DEMO == ["dsv4setup up --profile cpu-tiny --yes"]
    assert TESTS == ["pytest"]


def test_the_install_line_is_what_ci_does() -> None:
    """README: `python3 -m venv V && . V/bin/activate && pip install ... && dsv4setup doctor`; .ci/run the same
    three steps (its venv is .ci-venv), then `pytest` last."""
    venv, activate, install, doctor = (shlex.split(part) for part in SETUP[0].split("&&"))
    assert venv[:3] == ["python3", "-m", "venv"] and len(venv) == 4
    assert activate == [".", f"{venv[3]}/bin/activate"]
    assert doctor == ["dsv4setup", "doctor"]
    ci = [shlex.split(line) for line in ci_commands()]
    ci_venv = next(words for words in ci if words[:3] == ["python3", "-m", "venv"])
    assert [".", f"{ci_venv[3]}/bin/activate"] in ci, "CI activates the venv it made"
    assert install in ci, f"CI does not install as README does: {shlex.join(install)}"
    assert ci.index(install) > ci.index([".", f"{ci_venv[3]}/bin/activate"]) > ci.index(ci_venv)
    assert [shlex.split(TESTS[0])] == ci[-1:], "README's test command is what CI runs last"


@pytest.mark.parametrize("command", dsv4setup_commands())
def test_each_readme_command_parses_with_the_real_cli(command: str) -> None:
    assert parse_problem(command) is None, f"README.md: `{command}`: {parse_problem(command)}"


def test_the_profiles_named_exist(tmp_path: Path) -> None:
    listed = subprocess.run([sys.executable, "-m", "dsv4setup", "profile", "list", "--json"], capture_output=True,
                            text=True, env={**os.environ, "DSV4SETUP_WORKDIR": str(tmp_path)}, check=False)
    assert listed.returncode == 0, listed.stderr
    shipped = {p["name"] for p in json.loads(listed.stdout)["profiles"]}
    named = {words[words.index("--profile") + 1] for words in map(shlex.split, dsv4setup_commands())
             if "--profile" in words}
    assert named - {PLACEHOLDER_PROFILE}, "README names a shipped profile (the demo's)"
    assert named - {PLACEHOLDER_PROFILE} <= shipped, f"not shipped: {named - shipped - {PLACEHOLDER_PROFILE}}"


def test_readme_stays_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines (at most {MAX_LINES}): put reference material in docs/"


def markdown_links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target]


@pytest.mark.parametrize("page", [README, *sorted((REPO_ROOT / "docs").glob("*.md"))],
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_links_lead_to_files_that_exist(page: Path) -> None:
    missing = []
    for target in markdown_links(page):
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            missing.append(target)
        elif anchor and resolved.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", resolved.read_text(), flags=re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            if anchor not in slugs:
                missing.append(target)
    assert missing == [], f"{page.name}: links to nothing: {missing}"
