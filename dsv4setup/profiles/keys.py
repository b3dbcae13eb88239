"""Walk the profile model by dotted key: which type lives at `serve.max_model_len`?

Used for typed `--set` values, "did you mean" suggestions in error messages, and for
keeping `revision: 0123abc`-like plain YAML scalars as the strings they were meant to be.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from dsv4setup.profiles.model import Profile

Segment = str | int


def _strip(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def optional(annotation: Any) -> bool:
    """True when None is an accepted value."""
    annotation = _strip(annotation)
    return annotation is None or annotation is type(None) or (
        _is_union(annotation) and type(None) in get_args(annotation))


def unwrap(annotation: Any) -> Any:
    """`X | None` -> X (only when exactly one other member remains)."""
    annotation = _strip(annotation)
    if _is_union(annotation):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _strip(members[0])
    return annotation


def model_class(annotation: Any) -> type[BaseModel] | None:
    inner = unwrap(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def is_list(annotation: Any) -> bool:
    return get_origin(unwrap(annotation)) is list


def model_keys(model: type[BaseModel]) -> list[str]:
    """The keys a profile file uses for this model (aliases where set)."""
    return [field.alias or name for name, field in model.model_fields.items()]


def child(annotation: Any, segment: Segment) -> Any | None:
    """The type one key (or list index) further down, or None when there is no such key."""
    model = model_class(annotation)
    if model is not None:
        for name, field in model.model_fields.items():
            if segment in (name, field.alias):
                return field.annotation
        return None
    inner = unwrap(annotation)
    origin = get_origin(inner)
    if origin is dict:
        return get_args(inner)[1]
    if origin is list and (isinstance(segment, int) or str(segment).isdigit()):
        return get_args(inner)[0]
    return None


def at(path: Sequence[Segment], root: Any = Profile) -> Any | None:
    """The type at a dotted path inside a profile, or None when the path does not exist."""
    annotation: Any = root
    for segment in path:
        annotation = child(annotation, segment)
        if annotation is None:
            return None
    return annotation


def is_plain_str(annotation: Any) -> bool:
    """A field whose values are strings only (`str`, `str | None`, a Literal of strings)."""
    inner = unwrap(annotation)
    if inner is str:
        return True
    return get_origin(inner) is Literal and all(isinstance(a, str) for a in get_args(inner))


def allowed_keys(path: Sequence[Segment]) -> list[str] | None:
    """The keys accepted at this mapping, when it is a model (None for free-form mappings)."""
    annotation = at(path)
    model = model_class(annotation) if annotation is not None else None
    return model_keys(model) if model is not None else None
