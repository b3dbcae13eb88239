"""The one output path of every command: the document a core function built goes out as exactly one
JSON document on stdout (secrets redacted) for agents, or as text for people.

huggingface_hub's cli/_output.py is the model: commands hand their result here and never assemble
or print JSON themselves. Kept light: `doctor --json` start-up time is what agents pay first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from dsv4setup.core.secrets import redact_json

Document = Mapping[str, Any]


def emit_json(doc: Document) -> None:
    """Exactly one JSON document on stdout, secrets redacted."""
    sys.stdout.write(redact_json(dict(doc), indent=2, default=str) + "\n")
    sys.stdout.flush()


def emit(doc: Document, as_json: bool, human: Callable[[Document], None]) -> None:
    """Hand a command's document out: as JSON for agents (--json), else through `human` for people."""
    if as_json:
        emit_json(doc)
    else:
        human(doc)
