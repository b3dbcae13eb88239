"""Imports point down only: a package uses another step package's library modules, never its step module,
and the serve command renderer does not reach up into the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import dsv4setup

PACKAGE = Path(dsv4setup.__file__).parent
STEP_PACKAGES = ("preflight", "toolkit", "vllm", "patches", "download", "checkpoint", "cluster", "serve", "smoke",
                 "bench")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_step_package_imports_another_packages_step_module() -> None:
    wrong = []
    for pkg in STEP_PACKAGES:
        for path in (PACKAGE / pkg).rglob("*.py"):
            others = {f"dsv4setup.{other}.step" for other in STEP_PACKAGES if other != pkg}
            wrong += [f"{path.relative_to(PACKAGE)} imports {m}" for m in imported_modules(path) & others]
    assert not wrong, wrong


def test_serve_command_and_core_do_not_import_the_engine_or_anything_above() -> None:
    assert "dsv4setup.core.engine" not in imported_modules(PACKAGE / "serve" / "command.py")
    for path in (PACKAGE / "core").glob("*.py"):
        above = {m for m in imported_modules(path) if m.startswith("dsv4setup.")
                 and m.split(".")[1] not in ("core", "profiles")}
        assert not above, (path.name, above)
