"""The published JSON Schemas (dsv4setup/schemas/*.schema.json), found by a document's `schema` field."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from dsv4setup.core.resources import package_file

SCHEMAS_DIR = package_file("schemas")


@cache
def all_schemas() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(p.read_text(encoding="utf-8")) for p in sorted(SCHEMAS_DIR.glob("*.schema.json")))


@cache
def schemas_by_id() -> dict[str, dict[str, Any]]:
    """Map each document id (the `schema` const, e.g. "dsv4setup.status/2") to its JSON Schema."""
    found: dict[str, dict[str, Any]] = {}
    for schema in all_schemas():
        const = schema.get("properties", {}).get("schema", {}).get("const")
        if const:
            found[const] = schema
    return found


def validate_document(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (or KeyError for an unpublished id) when `doc` breaks its schema.

    Schemas refer to each other by `$id` (doctor embeds the hardware snapshot): all are registered.
    """
    import jsonschema
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in all_schemas() if "$id" in schema)
    jsonschema.Draft202012Validator(schemas_by_id()[doc["schema"]], registry=registry).validate(doc)
