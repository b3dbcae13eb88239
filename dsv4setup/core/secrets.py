"""Secret handling: the HF token and API keys must never reach logs, state or JSON.

`redact` replaces every known secret value in a text with a placeholder. Everything the
project writes to disk or prints passes through it. A secret of any length is redacted; one
shorter than SHORT is replaced only where it stands alone (not inside a longer word), so a
weak key like `abc` is masked in `--api-key abc` without turning `abcde` into `***de`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any

SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "DSV4SETUP_API_KEY", "OPENAI_API_KEY")
PLACEHOLDER = "***"
SHORT = 6
_extra: set[str] = set()


def register_secret(value: str | None) -> None:
    """Add a secret found at run time (a generated API key, a token from the HF login)."""
    if value:
        _extra.add(value)


def hf_token() -> str | None:
    """The Hugging Face token from the environment or the huggingface_hub login, registered as secret."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        try:
            from huggingface_hub import get_token

            token = get_token()
        except Exception:  # no login, or an old huggingface_hub: no token
            token = None
    register_secret(token)
    return token


def known_secrets() -> list[str]:
    values = {os.environ.get(name, "") for name in SECRET_ENV_VARS} | _extra
    return sorted((v for v in values if v), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    for secret in known_secrets() if secrets is None else secrets:
        if len(secret) >= SHORT:
            text = text.replace(secret, PLACEHOLDER)
        elif secret:
            text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", PLACEHOLDER, text)
    return text


def redact_obj(obj: object) -> object:
    """Redact every string inside a JSON-like object (dicts, lists, strings)."""
    secrets = known_secrets()
    if not secrets:
        return obj
    return _redact_in(obj, secrets)


def redact_json(doc: object, **dumps: Any) -> str:
    """`doc` as JSON text with every secret redacted in its strings and keys (always valid JSON:
    redacting the text instead could turn a number equal to a short secret into `***`)."""
    return json.dumps(redact_obj(doc), **dumps)


def _redact_in(obj: object, secrets: list[str]) -> object:
    if isinstance(obj, str):
        return redact(obj, secrets)
    if isinstance(obj, dict):
        return {_redact_in(k, secrets) if isinstance(k, str) else k: _redact_in(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_redact_in(v, secrets) for v in obj]
    return obj

