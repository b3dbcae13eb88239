"""The published JSON Schemas (dsv4setup/schemas/*.schema.json), found by a document's `schema` field."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from dsv4setup.resources import package_file

SCHEMAS_DIR = package_file("schemas")


@cache
def schemas_by_id() -> dict[str, dict[str, Any]]:
    """Map each document id (the `schema` const, e.g. "dsv4setup.status/1") to its JSON Schema."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(SCHEMAS_DIR.glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        const = schema.get("properties", {}).get("schema", {}).get("const")
        if const:
            found[const] = schema
    return found


def validate_document(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (or KeyError for an unpublished id) when `doc` breaks its schema."""
    import jsonschema

    schema = schemas_by_id()[doc["schema"]]
    jsonschema.Draft202012Validator(schema).validate(doc)
