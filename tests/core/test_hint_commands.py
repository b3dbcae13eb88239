"""Every `dsv4setup ...` command written into a fix, hint or known failure parses with the real CLI.

The collector reads the package's Python strings (ast: literals and f-strings, docstrings excepted)
and its data files (yaml: every string value), takes each command (in backticks, or running to the
end of its clause) and resolves it against the real click command tree in-process: the command
path exists, every option belongs to that command, the arguments fit.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import pkgutil
import re
import shlex
from collections.abc import Iterator
from typing import Any

import pytest
import typer
import yaml

import dsv4setup.cli
from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "dsv4setup"
DATA_FILES = [*PACKAGE.rglob("*.yaml"), *(REPO_ROOT / "profiles").glob("*.yaml"),
              *(REPO_ROOT / "patches").rglob("*.yaml")]

# What an f-string placeholder stands for: by its whole expression, else by a word in it (first match wins).
EXPRESSIONS = {"use": "--profile cpu-tiny"}
PLACEHOLDERS = [("step", "serve"), ("need", "vllm"), ("until", "vllm"), ("profile", "cpu-tiny"),
                ("rec[", "cpu-tiny"), ("key", "h200"), ("name", "cpu-tiny")]
PATH_PLACEHOLDER = "/tmp/dsv4setup-hint"

BACKTICKED = re.compile(r"`(dsv4setup\s[^`]*)`")
# Outside backticks a mention is a command only when a command name follows; it runs to the end
# of its clause or at a shell comment.
BARE = re.compile(r"(?<![\w`./-])dsv4setup ([a-z][a-z-]*)(?=[\s)]|$)([^`;,)(\n#]*)")


def _placeholder(expr: str) -> str:
    if expr in EXPRESSIONS:
        return EXPRESSIONS[expr]
    return next((value for word, value in PLACEHOLDERS if word in expr), PATH_PLACEHOLDER)


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                assert isinstance(value, ast.FormattedValue)
                parts.append(_placeholder(ast.unparse(value.value)))
        return "".join(parts)
    return None


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def _python_strings() -> Iterator[tuple[str, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        inside_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if id(node) in skip or id(node) in inside_fstrings:
                continue
            text = _text(node)
            if text and "dsv4setup " in text:
                yield f"{path.relative_to(REPO_ROOT)}:{node.lineno}", text


def _yaml_values(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _yaml_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from _yaml_values(item)


def _data_strings() -> Iterator[tuple[str, str]]:
    for path in sorted(DATA_FILES):
        for text in _yaml_values(yaml.safe_load(path.read_text(encoding="utf-8"))):
            if "dsv4setup " in text:
                yield str(path.relative_to(REPO_ROOT)), text


def _commands(text: str, top_level: set[str]) -> Iterator[str]:
    yield from (m.group(1).strip() for m in BACKTICKED.finditer(text))
    outside = BACKTICKED.sub("", text)
    for match in BARE.finditer(outside):
        if match.group(1) in top_level:
            yield f"dsv4setup {match.group(1)}{match.group(2)}".strip().rstrip(".:")


def _root_command() -> Any:
    for module in pkgutil.iter_modules(dsv4setup.cli.__path__):
        importlib.import_module(f"dsv4setup.cli.{module.name}")
    return typer.main.get_command(dsv4setup.cli.app)


ROOT = _root_command()
TOP_LEVEL = set(ROOT.list_commands(ROOT.make_context("dsv4setup", [], resilient_parsing=True)))
# Mentions that name the program, not a command to run.
NOT_COMMANDS = {("dsv4setup/profiles/model.py", "dsv4setup profile")}  # the profile JSON Schema's title
HINTS = [(where, command) for source in (_python_strings(), _data_strings())
         for where, text in source for command in _commands(text, TOP_LEVEL)
         if (where.split(":")[0], command) not in NOT_COMMANDS]


SHELL_OPERATORS = {">", ">>", "<", "|", "||", "&&", ";", "&"}


def parse_problem(command: str) -> str | None:
    """Why the real CLI would refuse `command` (None when it parses). A shell operator (`> FILE`, `| cmd`)
    ends the dsv4setup command."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    words = list(itertools.takewhile(lambda w: w not in SHELL_OPERATORS, tokens))[1:]
    ctx = ROOT.make_context("dsv4setup", [], resilient_parsing=True)
    cmd, path = ROOT, "dsv4setup"
    while hasattr(cmd, "get_command"):
        if not words or words[0].startswith("-"):
            if getattr(cmd, "invoke_without_command", False):
                break  # the group runs by itself: the words are its own options
            return f"{path} needs a sub-command"
        name, words = words[0], words[1:]
        sub = cmd.get_command(ctx, name)
        if sub is None:
            return f"{path} has no command {name!r}"
        path = f"{path} {name}"
        ctx = sub.make_context(name, [], parent=ctx, resilient_parsing=True)
        cmd = sub
    try:
        cmd.make_context(path.rsplit(" ", 1)[-1], words, parent=ctx.parent, resilient_parsing=False)
    except Exception as exc:  # click's (or typer's vendored click's) usage errors
        return f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
    return None


def test_the_collector_finds_the_hints() -> None:
    assert len(HINTS) >= 80, HINTS
    assert len({where.split(":")[0] for where, _ in HINTS}) >= 20


@pytest.mark.parametrize(("where", "command"), HINTS, ids=[f"{w}:{c}" for w, c in HINTS])
def test_hint_command_parses_with_the_real_cli(where: str, command: str) -> None:
    assert parse_problem(command) is None, f"{where}: `{command}`: {parse_problem(command)}"


@pytest.mark.parametrize("command", ["dsv4setup nonsense", "dsv4setup up --no-such-flag",
                                     "dsv4setup profile", "dsv4setup reset --step serve extra-arg"])
def test_a_wrong_command_is_refused(command: str) -> None:
    assert parse_problem(command) is not None
