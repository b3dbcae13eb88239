"""User overrides: `<workdir>/dsv4setup.yaml` and `--set key=value`, as layers over a profile.

A layer is a partial profile document plus where it came from. Layers merge key by key
(mappings merge, lists and scalars replace, `nodes.0.address`-style paths patch one list
item, an env variable set to null is removed); the merged document is validated once, and
each error names the layer that set the offending key.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from dsv4setup.core.errors import UsageError
from dsv4setup.core.fsutil import atomic_write_text
from dsv4setup.core.secrets import redact
from dsv4setup.core.state import now_iso
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles import keys
from dsv4setup.profiles.loader import (
    Issue,
    ProfileError,
    describe,
    dotted,
    parse_yaml,
    read_yaml,
    restore_plain_strings,
)
from dsv4setup.profiles.model import Profile

Loc = tuple[keys.Segment, ...]
NOT_OVERRIDABLE = ("name", "schema")
SELECT_KEY = "profile"  # dsv4setup.yaml: which profile this workdir uses
EVIDENCE_KEY = "evidence"  # dsv4setup.yaml: why a value was written by a tool (bench --apply-best)
OVERRIDES_HEADER = ("# dsv4setup overrides for this workdir: the same keys as a profile (`dsv4setup profile show`),\n"
                    "# plus `profile: NAME`. Merged over the profile; `--set key=value` goes on top.\n")


@dataclass
class Layer:
    """A partial profile document and its origin label ("profile:<file>", "preset:<name>", ...)."""

    origin: str
    data: dict[str, Any]
    where: Callable[[Loc], str]


@dataclass
class WorkdirOverrides:
    path: Path
    profile: str | None
    layer: Layer
    evidence: dict[str, Any] = field(default_factory=dict)


def _forbid_identity_keys(data: dict[str, Any], where: Callable[[Loc], str]) -> None:
    bad = [k for k in NOT_OVERRIDABLE if k in data]
    if bad:
        raise ProfileError([Issue(where((k,)), k, "cannot be overridden; choose another profile instead "
                                  "(`profile: NAME` in dsv4setup.yaml or --profile NAME)") for k in bad])


def read_workdir_overrides(workdir: Workdir) -> WorkdirOverrides | None:
    """`<workdir>/dsv4setup.yaml`, or None when there is none."""
    path = workdir.overrides_file
    if not path.exists():
        return None
    doc = read_yaml(path)
    if doc.data is None:
        data: dict[str, Any] = {}
    elif isinstance(doc.data, dict):
        data = restore_plain_strings(doc.data, doc.root, Profile)
    else:
        raise ProfileError([Issue(doc.where(()), "(top level)", "expected a mapping of profile keys")])
    data = dict(data)
    selected = data.pop(SELECT_KEY, None)
    if selected is not None and not isinstance(selected, str):
        raise ProfileError([Issue(doc.where((SELECT_KEY,)), SELECT_KEY, "expected a profile name")])
    evidence = data.pop(EVIDENCE_KEY, None) or {}
    if not isinstance(evidence, dict):
        raise ProfileError([Issue(doc.where((EVIDENCE_KEY,)), EVIDENCE_KEY, "expected a mapping")])
    _forbid_identity_keys(data, doc.where)
    return WorkdirOverrides(path, selected, Layer(f"workdir:{path}", data, doc.where), evidence)


def _typed_value(raw: str, annotation: Any, in_env: bool) -> Any:
    """A --set value: kept verbatim for string fields, else read as a YAML scalar or flow list/map."""
    if annotation is not None and keys.is_plain_str(annotation):
        if raw in ("null", "~") and (keys.optional(annotation) or in_env):
            return None
        return raw
    return yaml.safe_load(raw)


def parse_set(item: str) -> tuple[Loc, Any]:
    """`serve.max_model_len=131072` -> (("serve", "max_model_len"), 131072)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--set {item}: expected KEY=VALUE",
                         fix="e.g. --set serve.max_model_len=131072 --set env.NCCL_P2P_DISABLE=1")
    parts = key.split(".")
    if any(not p for p in parts):
        raise UsageError(f"--set {item}: empty key segment in {key!r}")
    path, annotation = typed_path(parts)
    try:
        value = _typed_value(raw, annotation, in_env=parts[0] == "env")
    except yaml.YAMLError as exc:
        raise UsageError(f"--set {item}: the value is not valid YAML: {exc}",
                         fix="quote it for the shell and in YAML, e.g. --set 'serve.extra_args=[\"--a\", \"b\"]'") \
            from None
    return tuple(path), value


def typed_path(parts: Sequence[str]) -> tuple[list[keys.Segment], Any]:
    """A dotted key's segments, digits made list indexes where the profile has a list (`multinode.nodes.1`),
    and the type found at its end (None when the key does not exist)."""
    path: list[keys.Segment] = []
    annotation: Any = Profile
    for part in parts:
        segment: keys.Segment = int(part) if annotation is not None and keys.is_list(annotation) and part.isdigit() \
            else part
        path.append(segment)
        annotation = keys.child(annotation, segment) if annotation is not None else None
    return path, annotation


def nest(path: Sequence[keys.Segment], value: Any) -> dict[Any, Any]:
    """(a, b), v -> {a: {b: v}}; int segments make index-keyed mappings that patch list items."""
    out: Any = value
    for segment in reversed(path):
        out = {segment: out}
    nested: dict[Any, Any] = out
    return nested


def set_layer(item: str) -> Layer:
    path, value = parse_set(item)
    _forbid_identity_keys({str(path[0]): None}, lambda _loc: f"--set {item}")
    return Layer("--set", nest(path, value), lambda _loc: f"--set {item}")


def merge(base: Any, patch: Any, layer: Layer, loc: Loc = ()) -> Any:
    """`patch` over `base`: mappings merge, index-keyed mappings patch list items, the rest replaces."""
    if isinstance(patch, dict) and isinstance(base, list) and patch and all(isinstance(k, int) for k in patch):
        items = list(base)
        for index, value in patch.items():
            if index >= len(items):
                raise ProfileError([Issue(layer.where((*loc, index)), dotted((*loc, index)),
                                          f"index {index} is out of range: the list has {len(items)} item(s)")])
            items[index] = merge(items[index], value, layer, (*loc, index))
        return items
    if isinstance(patch, dict) and isinstance(base, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value, layer, (*loc, key)) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(patch)


def merge_layers(layers: Sequence[Layer]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, layer.data, layer)
    if isinstance(merged.get("env"), dict):
        merged["env"] = {k: v for k, v in merged["env"].items() if v is not None}
    return merged


def matched_depth(data: Any, loc: Loc) -> int:
    """How many leading segments of `loc` this layer's data contains."""
    depth = 0
    for segment in loc:
        if isinstance(data, dict) and segment in data:
            data = data[segment]
        elif isinstance(data, dict) and str(segment).isdigit() and int(segment) in data:
            data = data[int(segment)]
        elif isinstance(data, list) and isinstance(segment, int) and segment < len(data):
            data = data[segment]
        else:
            break
        depth += 1
    return depth


def locate(loc: Loc, layers: Sequence[Layer]) -> str:
    """Where the value at `loc` came from: the latest layer that set the longest part of it."""
    best, best_depth = layers[0], 0
    for layer in layers:
        depth = matched_depth(layer.data, loc)
        if depth and depth >= best_depth:
            best, best_depth = layer, depth
    return best.where(loc)


def validate_layers(layers: Sequence[Layer]) -> Profile:
    """Merge and validate; every error names the file:line or --set that caused it."""
    merged = merge_layers(layers)
    try:
        return Profile.model_validate(merged)
    except ValidationError as exc:
        issues = [Issue(locate(tuple(e["loc"]), layers), dotted(e["loc"]), describe(e))
                  for e in exc.errors(include_url=False)]
        raise ProfileError(issues, fix="fix the value where it was set (profile file, dsv4setup.yaml or --set)") \
            from None


def flatten(data: Any, prefix: str = "", keep_empty: bool = True) -> dict[str, Any]:
    """Dotted leaves: mappings and lists of mappings are walked, other lists are one value."""
    items: list[tuple[Any, Any]] = []
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list) and data and all(isinstance(i, dict) for i in data):
        items = list(enumerate(data))
    if not items:
        return {prefix: data} if prefix and (keep_empty or data not in ({}, [])) else {}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key), keep_empty))
    return out


def origins_of(profile: Profile, layers: Sequence[Layer]) -> dict[str, str]:
    """Dotted key -> the last layer that set it, or "default"."""
    written = [(layer.origin, set(flatten(layer.data, keep_empty=False))) for layer in layers]
    result: dict[str, str] = {}
    for key in flatten(profile.document()):
        prefixes = {".".join(key.split(".")[:i]) for i in range(1, key.count(".") + 2)}
        result[key] = next((origin for origin, keys_ in reversed(written) if keys_ & prefixes), "default")
    return result


# --- writing dsv4setup.yaml (bench --apply-best, doctor advice) ----------------------------------

def write_override(workdir: Workdir, dotted_key: str, value: Any, evidence: dict[str, Any] | None = None) -> Path:
    """Set one key in `<workdir>/dsv4setup.yaml`, keeping the other keys and the comments.

    With `evidence`, it is stored under `evidence.<dotted_key>` (plus `written_at`), so the
    file says why a tool chose the value. The key and value are checked against the profile
    model first; a file that does not parse is refused, never overwritten.
    """
    path, annotation = typed_path(dotted_key.split("."))
    if annotation is None or path[0] in NOT_OVERRIDABLE:
        raise UsageError(f"cannot write override {dotted_key!r}: no such profile key",
                         fix="`dsv4setup profile show --json` lists the keys")
    try:
        value = TypeAdapter(annotation).validate_python(value)
    except ValidationError as exc:
        raise UsageError(f"override {dotted_key}: {describe(exc.errors()[0])}") from None
    plain = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    file = workdir.overrides_file
    text = file.read_text(encoding="utf-8") if file.exists() else OVERRIDES_HEADER
    if not isinstance(parse_yaml(text, file).data, dict | None):  # never touch a file that does not parse
        raise UsageError(f"{file}: expected a mapping of profile keys", fix="fix or remove the file")
    text = set_in_yaml_text(text, path, plain)
    if evidence is not None:
        text = set_in_yaml_text(text, [EVIDENCE_KEY, dotted_key], {**evidence, "written_at": now_iso()})
    atomic_write_text(file, redact(text))
    return file


class _CannotEdit(Exception):
    """The text edit does not apply (flow style, odd layout): fall back to a full re-dump."""


def _dump_block(data: dict[Any, Any], indent: int) -> str:
    """Block-style mapping at `indent`; values that are not mappings stay on their key's line."""
    pad = " " * indent
    return "".join(f"{pad}{_inline(k)}:\n{_dump_block(v, indent + 2)}" if isinstance(v, dict) and v
                   else f"{pad}{_inline(k)}: {_inline(v)}\n" for k, v in data.items())


def _inline(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _content_end(node: yaml.Node) -> int:
    """End of the node's own text (a block collection's end mark lies past trailing comments)."""
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        return _content_end(last[1] if isinstance(last, tuple) else last)
    return node.end_mark.index


def _after_line(text: str, index: int) -> tuple[str, int]:
    """(text with a final newline guaranteed, index just past the line holding `index`)."""
    newline = text.find("\n", index)
    if newline == -1:
        return text + "\n", len(text) + 1
    return text, newline + 1


def _replace_value(text: str, key_node: yaml.Node, value_node: yaml.Node, value: Any) -> str:
    start, end = key_node.end_mark.index, _content_end(value_node)
    if isinstance(value, dict) and value:
        block = _dump_block(value, key_node.start_mark.column + 2).rstrip("\n")
        return text[:start] + ":\n" + block + text[end:]
    return text[:start] + ": " + _inline(value) + text[end:]


def _edit(text: str, path: Sequence[keys.Segment], value: Any) -> str:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return text + ("" if not text or text.endswith("\n") else "\n") + _dump_block(nest(path, value), 0)
    node = root
    for i, segment in enumerate(path):
        if not isinstance(node, yaml.MappingNode) or node.flow_style:
            raise _CannotEdit
        pair = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(segment)),
                    None)
        if pair is None:
            indent = node.value[0][0].start_mark.column if node.value else 0
            text, at = _after_line(text, _content_end(node)) if node.value else (text, len(text))
            return text[:at] + _dump_block(nest(path[i:], value), indent) + text[at:]
        key_node, value_node = pair
        if i == len(path) - 1:
            return _replace_value(text, key_node, value_node, value)
        if isinstance(value_node, yaml.SequenceNode):
            raise _CannotEdit  # an index into a list the file holds: the re-dump keeps its other items
        if not isinstance(value_node, yaml.MappingNode):
            return _replace_value(text, key_node, value_node, nest(path[i + 1:], value))
        node = value_node
    raise _CannotEdit


def _set_in(data: dict[Any, Any], path: Sequence[keys.Segment], value: Any) -> dict[Any, Any]:
    """`data` with `value` at `path`; an int segment indexes a list the data holds (or keys an index patch)."""
    out = copy.deepcopy(data)
    cursor: Any = out
    for segment, following in zip(path[:-1], path[1:], strict=True):
        inner = _item(cursor, segment)
        if isinstance(following, int) and isinstance(inner, list) and following < len(inner):
            cursor = inner
            continue
        if not isinstance(inner, dict):
            inner = {}
            cursor[segment] = inner
        cursor = inner
    _item(cursor, path[-1])  # an index past the end of a list is refused, not an IndexError
    cursor[path[-1]] = value
    return out


def _item(container: Any, segment: keys.Segment) -> Any:
    if isinstance(container, list) and not (isinstance(segment, int) and segment < len(container)):
        raise UsageError(f"cannot set item {segment}: the list there in the overrides file has "
                         f"{len(container)} item(s)", fix="edit the list in dsv4setup.yaml by hand")
    if isinstance(container, list):
        return container[segment] if isinstance(segment, int) and segment < len(container) else None
    return container.get(segment)


def set_in_yaml_text(text: str, path: Sequence[keys.Segment], value: Any) -> str:
    """Set one nested key in YAML text, editing only its lines; re-dump the file if that is not possible."""
    before = yaml.safe_load(text) or {}
    expected = _set_in(before, path, value)
    try:
        edited = _edit(text, path, value)
        if yaml.safe_load(edited) == expected:
            return edited
    except (_CannotEdit, yaml.YAMLError):
        pass
    return OVERRIDES_HEADER + yaml.safe_dump(expected, sort_keys=False, allow_unicode=True, width=100)
