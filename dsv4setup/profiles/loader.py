"""Read profile files with errors that point at file, line and key.

PyYAML's composer keeps the position of every node; pydantic reports the key path of each
error. `YamlDoc.line` joins the two, so a typo reads
`profiles/x.yaml:12: serve.max_model_length: unknown key (did you mean max_model_len?)`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dsv4setup.core.errors import UsageError
from dsv4setup.core.resources import data_dir
from dsv4setup.core.workdir import Workdir
from dsv4setup.core.yamlfast import SAFE_LOADER
from dsv4setup.profiles import keys
from dsv4setup.profiles.model import Profile

STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class Issue:
    """One problem in one input: where (file:line, or a --set), which key, what was expected."""

    where: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.key or '(top level)'}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "key": self.key, "message": self.message}


class ProfileError(UsageError):
    """Invalid profile or override input; `issues` lists every problem found."""

    def __init__(self, issues: list[Issue], fix: str | None = None, commands: list[list[str]] | None = None) -> None:
        self.issues = issues
        self.commands = commands or []  # a literal fix, in order (profiles/fixes.py); `command` is the first
        super().__init__("\n".join(str(i) for i in issues),
                         fix=fix or "fix the keys above; `dsv4setup profile show NAME` prints a valid profile",
                         command=self.commands[0] if self.commands else None)


@dataclass
class YamlDoc:
    """A parsed YAML file: the data and the node tree that knows where each key is."""

    path: Path
    data: Any
    root: yaml.Node | None

    def node_at(self, loc: Sequence[keys.Segment]) -> tuple[yaml.Node | None, int | None, int]:
        """(node, 1-based line, matched depth) for the deepest node found along `loc`."""
        node, line, depth = self.root, (self.root.start_mark.line + 1 if self.root else None), 0
        for segment in loc:
            found = _child_node(node, segment)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
            depth += 1
        return node, line, depth

    def where(self, loc: Sequence[keys.Segment]) -> str:
        line = self.node_at(loc)[1]
        return f"{self.path}:{line}" if line else str(self.path)


def _child_node(node: yaml.Node | None, segment: keys.Segment) -> tuple[yaml.Node, yaml.Node] | None:
    """(node that names the child, the child's value node)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(segment):
                return key_node, value_node
    if isinstance(node, yaml.SequenceNode):
        index = segment if isinstance(segment, int) else int(segment) if str(segment).isdigit() else -1
        if 0 <= index < len(node.value):
            return node.value[index], node.value[index]
    return None


def _duplicate_keys(path: Path, node: yaml.Node | None, prefix: str = "") -> list[Issue]:
    """PyYAML keeps the last of two equal keys without a word; we refuse them."""
    issues: list[Issue] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value)
            dotted = f"{prefix}{name}"
            line = key_node.start_mark.line + 1
            if name in seen:
                issues.append(Issue(f"{path}:{line}", dotted, f"duplicate key (first at line {seen[name]})"))
            seen.setdefault(name, line)
            issues += _duplicate_keys(path, value_node, dotted + ".")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            issues += _duplicate_keys(path, item, f"{prefix}{i}.")
    return issues


def parse_yaml(text: str, path: Path) -> YamlDoc:
    """Parse one YAML document; syntax errors and duplicate keys raise ProfileError with a line."""
    loader: yaml.SafeLoader | yaml.CSafeLoader | None = None
    try:
        loader = SAFE_LOADER(text)  # its reader already refuses control characters
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ProfileError([Issue(f"{path}{line}", "(yaml syntax)", what)],
                           fix="fix the YAML syntax (indentation, ':' after keys, quotes)") from None
    except yaml.YAMLError as exc:
        raise ProfileError([Issue(str(path), "(yaml syntax)", str(exc))]) from None
    finally:
        if loader is not None:
            loader.dispose()
    duplicates = _duplicate_keys(path, root)
    if duplicates:
        raise ProfileError(duplicates, fix="keep one of each key")
    return YamlDoc(path, data, root)


def read_yaml(path: Path) -> YamlDoc:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", fix="check the path and that it is a UTF-8 text file") from None
    return parse_yaml(text, path)


def restore_plain_strings(data: Any, node: yaml.Node | None, annotation: Any) -> Any:
    """Give string fields the text as written: YAML reads `revision: 0123456` as an octal number and
    `version: 13.10` as 13.1; for a field that only takes strings we keep the characters instead."""
    if isinstance(node, yaml.ScalarNode):
        # a plain scalar: style None from the Python parser, "" from libyaml
        if not node.style and node.tag not in (STR_TAG, NULL_TAG) and keys.is_plain_str(annotation):
            return node.value
        return data
    if isinstance(data, dict) and isinstance(node, yaml.MappingNode):
        out = dict(data)
        for key_node, value_node in node.value:
            key = key_node.value
            sub = keys.child(annotation, key)
            if sub is not None and key in out:
                out[key] = restore_plain_strings(out[key], value_node, sub)
        return out
    if isinstance(data, list) and isinstance(node, yaml.SequenceNode):
        return [restore_plain_strings(item, item_node, keys.child(annotation, i))
                for i, (item, item_node) in enumerate(zip(data, node.value, strict=False))]
    return data


EXPECTED = {
    "int_parsing": "expected an integer", "int_type": "expected an integer",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number", "float_type": "expected a number",
    "bool_parsing": "expected true or false", "bool_type": "expected true or false",
    "string_type": "expected a string (quote it)", "list_type": "expected a list",
    "dict_type": "expected a mapping (key: value lines)", "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "missing": "required key is missing",
}


def describe(error: Any) -> str:
    """A pydantic error as "what was expected, what was found"."""
    kind, loc = error["type"], tuple(error["loc"])
    if kind == "extra_forbidden":
        allowed = keys.allowed_keys(loc[:-1]) or []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        fix = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown key{fix}; expected one of: {', '.join(allowed)}"
    if kind == "literal_error":
        return f"expected one of {error['ctx']['expected']}, got {error['input']!r}"
    if kind in ("value_error", "assertion_error"):
        return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = EXPECTED.get(kind) or str(error["msg"]).replace("Input should be", "expected")
    if kind != "missing" and not isinstance(error.get("input"), dict | list):
        message += f", got {error['input']!r}"
    return message


def dotted(loc: Sequence[keys.Segment]) -> str:
    return ".".join(str(p) for p in loc if p != "[key]")


def _line_order(issue: Issue) -> tuple[str, int]:
    head, _, tail = issue.where.rpartition(":")
    return (head, int(tail)) if tail.isdigit() else (issue.where, 0)


def validation_issues(exc: ValidationError, where: Callable[[tuple[keys.Segment, ...]], str]) -> list[Issue]:
    """One Issue per pydantic error, located by `where(loc)`, in file and line order."""
    issues = [Issue(where(tuple(e["loc"])), dotted(e["loc"]), describe(e)) for e in exc.errors(include_url=False)]
    return sorted(issues, key=_line_order)


def profile_data(doc: YamlDoc) -> dict[str, Any]:
    """The document as a mapping of profile keys (raises ProfileError when it is not a mapping)."""
    if doc.data is None:
        return {}
    if not isinstance(doc.data, dict):
        raise ProfileError([Issue(doc.where(()), "(top level)",
                                  f"expected a mapping of profile keys, got a {type(doc.data).__name__}")])
    mapping: dict[str, Any] = restore_plain_strings(doc.data, doc.root, Profile)
    return mapping


def load_profile_file(path: Path) -> Profile:
    """Read and validate one profile file, its default preset applied to serve.

    Every problem is reported as file:line: key: what was expected.
    """
    doc = read_yaml(Path(path))
    data = profile_data(doc)
    try:
        return Profile.model_validate(data).with_preset()
    except ValidationError as exc:
        raise ProfileError(validation_issues(exc, doc.where)) from None


def shipped_profile_files() -> list[Path]:
    return sorted(data_dir("profiles").glob("*.yaml"))


def user_profiles_dir(workdir: Workdir) -> Path:
    """Profiles a user keeps beside one deployment (`profile import-recipe` writes here)."""
    return workdir.root / "profiles"


def user_profile_files(workdir: Workdir | None) -> list[Path]:
    return sorted(user_profiles_dir(workdir).glob("*.yaml")) if workdir is not None else []


def load_named_file(path: Path) -> Profile:
    """A profile file found by name: its `name` must equal the file name, so names stay unambiguous."""
    profile = load_profile_file(path)
    if profile.name != path.stem:
        doc = read_yaml(path)
        raise ProfileError([Issue(doc.where(("name",)), "name",
                                  f"{profile.name!r} must equal the file name {path.stem!r}")],
                           fix=f"rename the file to {profile.name}.yaml or the profile to {path.stem}")
    return profile


def load_all_profiles() -> list[Profile]:
    """The shipped profiles, validated, in name order."""
    return [load_named_file(p) for p in shipped_profile_files()]


def profile_index(workdir: Workdir | None = None) -> dict[str, Path]:
    """name -> file for the shipped profiles and the workdir's own (a user profile may not shadow a shipped one)."""
    index = {p.stem: p for p in shipped_profile_files()}
    for path in user_profile_files(workdir):
        if path.stem in index:
            raise UsageError(f"{path}: a user profile may not reuse the shipped name {path.stem!r}",
                             fix="rename the file and the profile's `name`")
        index[path.stem] = path
    return index


def is_path(name: str) -> bool:
    """`--profile ./mine.yaml` names a file rather than a profile."""
    return name.endswith((".yaml", ".yml")) or "/" in name


def find_profile_file(name: str, workdir: Workdir | None = None) -> Path:
    """The file of a profile name, or of a path to a profile file; unknown names list the known ones."""
    if is_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UsageError(f"profile file {path} does not exist")
        return path.absolute()
    index = profile_index(workdir)
    if name not in index:
        close = difflib.get_close_matches(name, list(index), n=1)
        raise UsageError(f"unknown profile {name!r}" + (f" (did you mean {close[0]}?)" if close else "")
                         + f"; available: {', '.join(sorted(index))}",
                         fix="`dsv4setup profile list` shows them with the hardware each one is for")
    return index[name]


PROFILE_LIST_SCHEMA = "dsv4setup.profile-list/1"


def _summary(profile: Profile, path: Path, shipped: bool) -> dict[str, Any]:
    return {"name": profile.name, "description": profile.description, "verified": profile.verified,
            "source": profile.source, "file": str(path), "shipped": shipped,
            "match": profile.match.model_dump(mode="json"),
            "tensor_parallel_size": profile.serve.tensor_parallel_size,
            "num_speculative_tokens": profile.spec.num_speculative_tokens,
            "preset": profile.preset, "presets": list(profile.presets), "multinode": profile.multinode is not None}


def profile_list_doc(workdir: Workdir) -> dict[str, Any]:
    """The `dsv4setup.profile-list/1` document: the shipped profiles and the workdir's own."""
    shipped = set(shipped_profile_files())
    return {"schema": PROFILE_LIST_SCHEMA, "profiles": [
        _summary(load_named_file(path), path, path in shipped) for path in profile_index(workdir).values()]}
