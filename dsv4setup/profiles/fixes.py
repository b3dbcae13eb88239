"""Config errors that carry the offending value and, where the intended key is known, a literal fix.

Every issue of a profile or override error already names where the value came from (file:line
of the profile or dsv4setup.yaml, or the `--set` argument) and its key; `with_values` adds the
value as written. A flag in `serve.extra_args` that the profile renders from a field (`--host`,
any spelling vLLM accepts: `--hos`, `--host=...`) has one right answer: the field, set to the
user's value, and the flag out of extra_args. `extra_args_fix` computes those commands
(`profile unset` / `profile set`, the user's value carried over) for `next` and the error's fix.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsv4setup.profiles import flags
from dsv4setup.profiles.loader import Issue, ProfileError

EXTRA_ARGS = "serve.extra_args"


def _field_of(name: str) -> tuple[str, str] | None:
    """(profile key, kind) of the managed flag `name` stands for: itself, its `--no-` form, or the one managed
    flag it abbreviates; None when it names no field (a reserved flag) or is ambiguous."""
    if name in flags.FIELD_FLAGS:
        return flags.FIELD_FLAGS[name]
    base = flags.bool_base(name)
    if base is not None:
        return flags.FIELD_FLAGS[base][0], "false"
    found = {flags.FIELD_FLAGS[f] for f in flags.FIELD_FLAGS if f.startswith(name) and name.startswith(f[:2])}
    return found.pop() if len(found) == 1 else None


def _setting(key: str, kind: str, value: str | None) -> str | None:
    """`KEY=VALUE` for a managed flag as written, or None when its value cannot be carried over."""
    if kind == "false":
        return f"{key}=false"
    if kind == "bool":
        return f"{key}={'true' if value is None else value}"
    if value is None:
        return None
    if kind == "spec":
        try:
            k = json.loads(value).get("num_speculative_tokens")
        except (ValueError, AttributeError):
            return None
        return f"{key}={k}" if isinstance(k, int) else None
    return f"{key}={value}"


def split_extra_args(args: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(the extra args to keep, `KEY=VALUE` for each managed flag dropped); None when no literal fix is known
    (a `--config` file, an ambiguous abbreviation, a flag without its value, a token that is not a flag)."""
    kept: list[str] = []
    settings: list[str] = []
    try:
        parsed = list(flags.pairs(list(args)))
    except ValueError:
        return None
    for _flag, value, tokens in parsed:
        name = flags.option_name(tokens[0]) or ""
        if flags.conflict(tokens[0]) is None:
            if flags.CONFIG_FLAG.startswith(name) and len(name) > 2:
                return None
            kept += tokens
            continue
        field = _field_of(name)
        if field is None:
            if len(name) <= 2 or not any(r.startswith(name) for r in flags.RESERVED_FLAGS):
                return None  # ambiguous, or a bare `--`
            continue  # a reserved flag (--model, --api-key, ...): the profile sets it; its value is not carried
        setting = _setting(*field, value)
        if setting is None:
            return None
        settings.append(setting)
    return kept, settings


def extra_args_fix(args: Sequence[str], where: str, workdir_root: Path,
                   overrides_file: Path) -> tuple[list[list[str]] | None, str] | None:
    """The commands (None: no command applies, e.g. a `--set` on this command line) and the fix in words."""
    split = split_extra_args(args)
    if split is None:
        return None
    kept, settings = split
    wd = ["--workdir", str(workdir_root)]
    if where.startswith("--set "):
        parts = [f"--set {s}" for s in settings] + ([f"--set {EXTRA_ARGS}={json.dumps(kept)}"] if kept else [])
        return None, f"replace `{where}` with `{' '.join(parts)}`" if parts else f"drop `{where}`"
    if where.startswith(str(overrides_file)) and not kept:
        commands = [["dsv4setup", "profile", "unset", EXTRA_ARGS, *wd]]
        commands += [["dsv4setup", "profile", "set", *settings, *wd]] if settings else []
    else:  # the profile file's list, or one that keeps other args: set over it in the workdir
        commands = [["dsv4setup", "profile", "set", f"{EXTRA_ARGS}={json.dumps(kept)}", *settings, *wd]]
    return commands, "run " + ", then ".join(f"`{shlex.join(c)}`" for c in commands)


def _value_at(data: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = data
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def with_values(exc: ProfileError, merged: dict[str, Any], workdir_root: Path,
                overrides_file: Path) -> ProfileError:
    """The error again, each issue naming the value as written, and a literal fix where one is known."""
    issues, fix, commands = [], exc.fix, None
    for issue in exc.issues:
        found, value = _value_at(merged, issue.key) if issue.key else (False, None)
        note = f" (the value: {json.dumps(value)})" if found and ", got " not in issue.message else ""
        issues.append(Issue(issue.where, issue.key, issue.message + note))
        if issue.key == EXTRA_ARGS and found and isinstance(value, list) and commands is None:
            literal = extra_args_fix([str(v) for v in value], issue.where, workdir_root, overrides_file)
            if literal is not None:
                commands, fix = literal
    return ProfileError(issues, fix=fix, commands=commands)
