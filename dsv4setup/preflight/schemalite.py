"""A small JSON Schema (2020-12) validator for the keywords dsv4setup's snapshot schema uses.

Why not `jsonschema`: importing it costs more than typer and rich together, and
`doctor --snapshot F --json` must start fast. The tests check that this validator and
`jsonschema` agree on every fixture and on broken documents, and that the shipped schema uses
no keyword outside `KEYWORDS` (an unknown keyword raises rather than being ignored).
"""

from __future__ import annotations

import re
from typing import Any

ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples"})
KEYWORDS = frozenset({"$ref", "type", "properties", "required", "additionalProperties", "items", "prefixItems",
                      "minItems", "maxItems", "enum", "const", "pattern", "minimum"})

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "null": (type(None),),
    "integer": (int,), "number": (int, float),
}


def _is(instance: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(instance, bool):
        return False
    return isinstance(instance, _TYPES[name])


def _where(path: str) -> str:
    return path or "(top level)"


class Validator:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.root = schema

    def errors(self, instance: Any) -> list[str]:
        found: list[str] = []
        self._check(instance, self.root, "", found)
        return found

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref is supported, not {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        resolved: dict[str, Any] = node
        return resolved

    def _check(self, inst: Any, schema: dict[str, Any], path: str, found: list[str]) -> None:
        unknown = set(schema) - KEYWORDS - ANNOTATIONS
        if unknown:
            raise ValueError(f"schema keyword(s) not supported by schemalite: {sorted(unknown)}")
        if "$ref" in schema:
            self._check(inst, self._resolve(schema["$ref"]), path, found)
        if "type" in schema:
            names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_is(inst, n) for n in names):
                found.append(f"{_where(path)}: expected {' or '.join(names)}, got {_json_type(inst)} {_short(inst)}")
                return
        if "const" in schema and inst != schema["const"]:
            found.append(f"{_where(path)}: expected {schema['const']!r}, got {_short(inst)}")
        if "enum" in schema and inst not in schema["enum"]:
            found.append(f"{_where(path)}: {_short(inst)} is not one of {', '.join(map(repr, schema['enum']))}")
        if isinstance(inst, str) and "pattern" in schema and not re.search(schema["pattern"], inst):
            found.append(f"{_where(path)}: {inst!r} does not match {schema['pattern']!r}")
        if _is(inst, "number") and "minimum" in schema and inst < schema["minimum"]:
            found.append(f"{_where(path)}: {inst} is below the minimum {schema['minimum']}")
        if isinstance(inst, dict):
            self._object(inst, schema, path, found)
        if isinstance(inst, list):
            self._array(inst, schema, path, found)

    def _object(self, inst: dict[str, Any], schema: dict[str, Any], path: str, found: list[str]) -> None:
        for key in schema.get("required", []):
            if key not in inst:
                found.append(f"{_where(path)}: missing required field {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in inst.items():
            sub = f"{path}.{key}" if path else key
            if key in props:
                self._check(value, props[key], sub, found)
            elif extra is False:
                found.append(f"{_where(path)}: unexpected field {key!r}")
            elif isinstance(extra, dict):
                self._check(value, extra, sub, found)

    def _array(self, inst: list[Any], schema: dict[str, Any], path: str, found: list[str]) -> None:
        if "minItems" in schema and len(inst) < schema["minItems"]:
            found.append(f"{_where(path)}: needs at least {schema['minItems']} items, has {len(inst)}")
        if "maxItems" in schema and len(inst) > schema["maxItems"]:
            found.append(f"{_where(path)}: allows at most {schema['maxItems']} items, has {len(inst)}")
        prefix = schema.get("prefixItems", [])
        for i, value in enumerate(inst):
            if i < len(prefix):
                self._check(value, prefix[i], f"{path}[{i}]", found)
            elif "items" in schema:
                self._check(value, schema["items"], f"{path}[{i}]", found)


def _json_type(inst: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is(inst, name):
            return name
    return type(inst).__name__


def _short(inst: Any) -> str:
    text = repr(inst)
    return text if len(text) <= 60 else text[:57] + "..."
