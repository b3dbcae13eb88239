"""cli/ assembles no JSON: each command hands output.emit a document a function below cli/ built.

The check reads the CLI modules: none imports json, and no call to emit/emit_json gets a dict
literal (or a dict display spread into one), so a new field cannot slip into cli/ unseen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dsv4setup.cli

CLI = Path(dsv4setup.cli.__file__).parent
EMITTERS = {"emit", "emit_json"}


def json_in_cli(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name == "json" for a in node.names):
            found.append(f"{path.name}:{node.lineno}: imports json")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in EMITTERS \
                and node.args and isinstance(node.args[0], ast.Dict):
            found.append(f"{path.name}:{node.lineno}: {node.func.id} of a dict built here")
    return found


def test_no_cli_module_imports_json_or_emits_a_dict_it_built() -> None:
    wrong = [problem for path in sorted(CLI.glob("*.py")) for problem in json_in_cli(path)]
    assert not wrong, wrong


def test_the_check_sees_a_document_assembled_in_the_cli(tmp_path: Path) -> None:
    module = tmp_path / "made_up.py"
    module.write_text('import json\nfrom dsv4setup.cli.output import emit_json\n\n'
                      'def cmd() -> None:\n    emit_json({"schema": "dsv4setup.x/1", "ok": True})\n')
    assert json_in_cli(module) == ["made_up.py:1: imports json", "made_up.py:5: emit_json of a dict built here"]
