"""Secret handling: the HF token and API keys must never reach logs, state or JSON.

`redact` replaces every known secret value in a text with a placeholder. Everything the
project writes to disk or prints passes through it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "DSV4SETUP_API_KEY", "OPENAI_API_KEY")
PLACEHOLDER = "***"
_extra: set[str] = set()


def register_secret(value: str | None) -> None:
    """Add a secret found at run time (a generated API key, a token from the HF login)."""
    if value and len(value) >= 6:
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
    return sorted((v for v in values if len(v) >= 6), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    for secret in known_secrets() if secrets is None else secrets:
        if secret:
            text = text.replace(secret, PLACEHOLDER)
    return text


def redact_obj(obj: object) -> object:
    """Redact every string inside a JSON-like object (dicts, lists, strings)."""
    secrets = known_secrets()
    if not secrets:
        return obj
    return _redact_in(obj, secrets)


def _redact_in(obj: object, secrets: list[str]) -> object:
    if isinstance(obj, str):
        return redact(obj, secrets)
    if isinstance(obj, dict):
        return {k: _redact_in(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_redact_in(v, secrets) for v in obj]
    return obj
