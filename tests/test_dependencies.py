"""Every third-party module dsv4setup imports comes from a distribution pyproject.toml declares (not one
that happens to arrive with another dependency and may leave with it)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

from tests.conftest import REPO_ROOT

SERVING_VENV_ONLY = {"vllm"}  # imported by scripts that run inside the serving venv, never by dsv4setup itself


def imported_top_levels() -> set[str]:
    names: set[str] = set()
    for path in (REPO_ROOT / "dsv4setup").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"dsv4setup", "__future__"} - SERVING_VENV_ONLY


def test_every_imported_distribution_is_declared() -> None:
    project = tomllib.loads(Path(REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower().replace("_", "-") for r in project["dependencies"]}
    owners = packages_distributions()
    undeclared = {module: owners.get(module) for module in imported_top_levels()
                  if not {d.lower().replace("_", "-") for d in owners.get(module, [module])} & declared}
    assert undeclared == {}
