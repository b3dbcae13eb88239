"""dsv4setup uses only huggingface_hub's public API: its documented modules and the names they export.

A private helper (such as `huggingface_hub.file_download.http_get`, which the downloader once used)
may change or vanish in any release; the version range in pyproject.toml would not protect us.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import dsv4setup

PACKAGE = Path(dsv4setup.__file__).parent
# The modules huggingface_hub documents for users (package reference: top level, utilities, errors,
# environment constants); everything else (file_download, _snapshot_download, hf_api internals) is not.
PUBLIC_MODULES = {"huggingface_hub", "huggingface_hub.utils", "huggingface_hub.errors", "huggingface_hub.constants"}
PUBLIC_SUBMODULES = {m.rsplit(".", 1)[1] for m in PUBLIC_MODULES if "." in m}


def hf_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for every import of huggingface_hub in `path` (name None for `import m`)."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "huggingface_hub":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names
                      if alias.name.split(".")[0] == "huggingface_hub"]
    return found


def private_use(module: str, name: str | None) -> str | None:
    """Why this import is not public API, or None."""
    if module not in PUBLIC_MODULES:
        return f"{module} is not one of huggingface_hub's public modules"
    if name is None:
        return None
    if name.startswith("_"):
        return f"{name} is private"
    exported = getattr(importlib.import_module(module), "__all__", None)
    if module == "huggingface_hub" and name in PUBLIC_SUBMODULES:
        return None
    if exported is not None and name not in exported:
        return f"{module} does not export {name}"
    return None


def test_no_private_huggingface_hub_name_is_imported_anywhere_in_the_package() -> None:
    wrong = [f"{path.relative_to(PACKAGE)}:{line}: {why}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for line, module, name in hf_imports(path)
             if (why := private_use(module, name)) is not None]
    assert not wrong, wrong


def test_the_check_catches_the_private_download_helper_and_underscored_names() -> None:
    assert private_use("huggingface_hub.file_download", "http_get") is not None
    assert private_use("huggingface_hub.utils", "_http") is not None
    assert private_use("huggingface_hub", "not_exported_anywhere") is not None
    assert private_use("huggingface_hub", "hf_hub_download") is None
    assert private_use("huggingface_hub.utils", "build_hf_headers") is None
