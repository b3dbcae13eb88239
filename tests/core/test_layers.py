"""The layer map of ARCHITECTURE.md, enforced: every import in dsv4setup (module level, in a function, under
TYPE_CHECKING; `import a.b`, `from a import b`, relative) points at a package of the same rank or lower, and a
step package never imports another step package's `step` module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import dsv4setup

PACKAGE = Path(dsv4setup.__file__).parent
ROOT = PACKAGE.parent
STEP_PACKAGES = ("preflight", "toolkit", "vllm", "patches", "download", "checkpoint", "cluster", "serve", "smoke",
                 "bench")

# Each top-level package or module of dsv4setup and its rank (ARCHITECTURE.md's table says the same).
# A module may import its own rank and those below it. `dsv4setup` is the root `__init__` (the version only).
RANKS: dict[str, int] = {
    "dsv4setup": 0, "core": 0,
    "hardware": 1, "hub": 1,
    "profiles": 2,
    "engine": 3,
    **dict.fromkeys(STEP_PACKAGES, 4), "service": 4, "top": 4,
    "runbook": 5, "next_action": 5, "status_check": 5, "tinymodel": 5, "upgrade": 5,
    "cli": 6,
    "__main__": 7,
}

# (importing module, imported module) -> why it may point up. Empty: every import points down.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_statements(source: str, module: str, is_package: bool = False) -> list[tuple[int, set[str]]]:
    """Each import statement of `source`, wherever it stands, with the modules it may reach: for
    `from X import y` both X and X.y (y may be a submodule); relative imports resolved against `module`."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    statements: list[tuple[int, set[str]]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            statements.append((node.lineno, {alias.name for alias in node.names}))
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]) if node.level \
                else node.module or ""
            base = base.strip(".")
            statements.append((node.lineno, {base} | {f"{base}.{alias.name}" for alias in node.names}))
    return statements


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    return {m for _, found in import_statements(source, module, is_package) for m in found}


def unit(module: str) -> str | None:
    """The ranked unit a dsv4setup module belongs to: its top-level package or module (None: outside dsv4setup)."""
    parts = module.split(".")
    if parts[0] != "dsv4setup":
        return None
    if len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "dsv4setup"


def modules() -> list[tuple[str, str, Path]]:
    return [(module_name(p), p.read_text(encoding="utf-8"), p) for p in sorted(PACKAGE.rglob("*.py"))]


def imports_of(name: str, source: str, path: Path) -> set[tuple[int, str]]:
    """(line, dsv4setup module) of each import in `name`."""
    return {(line, m) for line, found in import_statements(source, name, path.name == "__init__.py")
            for m in found if unit(m) is not None}


def upward_imports(name: str, source: str, path: Path) -> list[str]:
    """The imports of `name` that point up and are not allowed; `from X import y` is told once, as X."""
    rank = RANKS[unit(name) or ""]
    bad = {(line, m) for line, m in imports_of(name, source, path)
           if RANKS[unit(m) or ""] > rank and (name, m) not in ALLOWED_UPWARD}
    return [f"{name}:{line} (rank {rank}) imports {m} (rank {RANKS[unit(m) or '']})"
            for line, m in sorted(bad) if (line, m.rpartition(".")[0]) not in bad]


def step_module_imports(name: str, source: str, path: Path) -> list[str]:
    """A step package's imports of another step package's `step` module."""
    own = name.split(".")[1] if "." in name else ""
    if own not in STEP_PACKAGES:
        return []
    steps = {f"dsv4setup.{pkg}.step" for pkg in STEP_PACKAGES if pkg != own}
    return [f"{name}:{line} imports {m}" for line, m in sorted(imports_of(name, source, path)) if m in steps]


def test_every_package_and_top_level_module_has_a_rank() -> None:
    units = {unit(name) for name, _, _ in modules()}
    assert units <= RANKS.keys(), f"add to RANKS (and ARCHITECTURE.md's table): {sorted(units - RANKS.keys())}"
    assert not RANKS.keys() - units - {"dsv4setup"}, f"ranked but gone: {sorted(RANKS.keys() - units)}"


def test_imports_point_down_only() -> None:
    upward = [line for name, source, path in modules() for line in upward_imports(name, source, path)]
    assert not upward, "\n".join(upward)


def test_every_allowed_upward_import_says_why_and_still_exists() -> None:
    present = {(name, target) for name, source, path in modules() for _, target in imports_of(name, source, path)}
    for pair, reason in ALLOWED_UPWARD.items():
        assert len(reason.split()) >= 5, f"{pair}: say why it may point up"
        assert pair in present, f"{pair} no longer imported: drop it from ALLOWED_UPWARD"


def test_no_step_package_imports_another_packages_step_module() -> None:
    wrong = [line for name, source, path in modules() for line in step_module_imports(name, source, path)]
    assert not wrong, wrong


def test_only_the_cli_and_top_render_use_typer_or_rich() -> None:
    """The core and every package under the cli know nothing of typer or rich (top/render.py draws top's screen)."""
    wrong = []
    for name, source, path in modules():
        roots = {m.split(".")[0] for m in imported_modules(source, name, path.name == "__init__.py")}
        if roots & {"typer", "rich"} and unit(name) != "cli" and name != "dsv4setup.top.render":
            wrong.append(name)
    assert not wrong, wrong


def test_serve_command_does_not_import_the_engine() -> None:
    """The serve command renderer is imported by the doctor and `service`: it stays free of the engine."""
    path = PACKAGE / "serve" / "command.py"
    assert "dsv4setup.engine" not in imported_modules(path.read_text(encoding="utf-8"), "dsv4setup.serve.command")


@pytest.mark.parametrize(("source", "module", "want"), [
    ("import dsv4setup.cli.main", "dsv4setup.core.x", "dsv4setup.cli.main"),
    ("from dsv4setup.cli import main", "dsv4setup.core.x", "dsv4setup.cli.main"),
    ("from dsv4setup import cli", "dsv4setup.core.x", "dsv4setup.cli"),
    ("def f():\n    from dsv4setup.serve.launch import start\n", "dsv4setup.core.x", "dsv4setup.serve.launch"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dsv4setup.profiles.model import Profile\n",
     "dsv4setup.core.x", "dsv4setup.profiles.model"),
    ("from ..profiles import model", "dsv4setup.core.x", "dsv4setup.profiles.model"),
    ("from ..profiles.model import Profile", "dsv4setup.core.x", "dsv4setup.profiles.model"),
    ("from . import engine", "dsv4setup.core.x", "dsv4setup.core.engine"),
    ("from .. import runbook", "dsv4setup.core", "dsv4setup.runbook"),
])
def test_every_import_form_is_seen(source: str, module: str, want: str) -> None:
    """A demonstration of the reader: each form of import names the module it reaches."""
    assert want in imported_modules(source, module, is_package=module == "dsv4setup.core")


def test_the_checks_flag_an_upward_import_and_another_packages_step_module() -> None:
    """A demonstration of the two checks on made-up modules (the real ones must give nothing)."""
    core = PACKAGE / "core" / "state.py"
    assert upward_imports("dsv4setup.core.state", "def f():\n    from dsv4setup import runbook\n", core) == [
        "dsv4setup.core.state:2 (rank 0) imports dsv4setup.runbook (rank 5)"]
    launch = PACKAGE / "serve" / "launch.py"
    assert step_module_imports("dsv4setup.serve.launch", "from dsv4setup.smoke import step\n", launch) == [
        "dsv4setup.serve.launch:1 imports dsv4setup.smoke.step"]
    assert step_module_imports("dsv4setup.serve.launch", "from . import step\n", launch) == []


def test_architecture_md_table_matches_the_ranks() -> None:
    """ARCHITECTURE.md's layer table names every ranked unit with the rank the test enforces."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table: dict[str, int] = {}
    for line in text.splitlines():
        if row := re.match(r"^\|\s*(\d+)\s*\|([^|]*)\|", line):
            table |= dict.fromkeys(re.findall(r"`(?:dsv4setup/)?(\w+)(?:/|\.py)?`", row.group(2)), int(row.group(1)))
    assert table == {u: r for u, r in RANKS.items() if u != "dsv4setup"}
