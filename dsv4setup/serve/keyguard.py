"""The API key in front of every route of the vLLM server (an ASGI middleware; standard library only).

vLLM's own key check (its AuthenticationMiddleware) guards only paths under /v1, /v2, /inference
and /cohere: /invocations (the same inference), /tokenize, /detokenize, /metrics, /version, /pooling
and the rest answer anyone. This middleware answers 401 to every HTTP request and refuses every
websocket handshake that does not carry `Authorization: Bearer <key>`, except:
- GET/HEAD /health (readiness probes: the serve step, the systemd unit's ExecStartPost), and
- a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method): vLLM's CORS middleware
  answers it without reaching any route, and browsers never send a key with it.

vLLM loads it through its own extension point, `--middleware dsv4setup_keyguard.KeyGuard`, and
builds it with the app as its only argument, so it reads the key itself from VLLM_API_KEY, the
environment variable the serve step sets at exec time (vLLM's own check reads the same one). No key
in the environment fails closed: every guarded request gets 401.

This file is copied verbatim into <workdir>/run/keyguard/dsv4setup_keyguard.py, which the serve
command puts on the server's PYTHONPATH: the serving venv's Python has no dsv4setup, so this file
imports nothing but the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KEY_ENV = "VLLM_API_KEY"
OPEN_PATHS = frozenset({"/health"})  # what a readiness probe needs, nothing else
OPEN_METHODS = frozenset({"GET", "HEAD"})
UNAUTHORIZED_BODY = json.dumps({"error": "Unauthorized"}).encode()
UNAUTHORIZED_HEADERS = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                        (b"content-length", str(len(UNAUTHORIZED_BODY)).encode())]
WS_POLICY_VIOLATION = 1008  # a websocket close before accept: the server answers the handshake with 403


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()  # equal lengths for compare_digest, whatever was sent


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a header (ASGI gives names lower-cased)."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value)
    return None


def _path(scope: Scope) -> str:
    """The request path as the app routes it (the root path, when one is set, removed)."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", "") or "")
    return path[len(root):] if root and path.startswith(root) else path


class KeyGuard:
    """Pure ASGI middleware: `http` and `websocket` need the key (but /health and CORS preflights), the rest passes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        key = os.environ.get(KEY_ENV, "")
        self._key_digest = _digest(key.encode()) if key else None
        if self._key_digest is None:
            print(f"dsv4setup key guard: {KEY_ENV} is not set; every request but /health gets 401",
                  file=sys.stderr, flush=True)

    def is_open(self, scope: Scope) -> bool:
        """Requests that pass without a key: GET/HEAD /health, and CORS preflights."""
        if scope["type"] != "http":
            return False
        method = scope.get("method", "")
        if method in OPEN_METHODS and _path(scope) in OPEN_PATHS:
            return True
        return (method == "OPTIONS" and _header(scope, b"origin") is not None
                and _header(scope, b"access-control-request-method") is not None)

    def authorized(self, scope: Scope) -> bool:
        """`Authorization: Bearer <key>` (scheme case-insensitive, as vLLM's own check), compared in constant time."""
        if self._key_digest is None:
            return False
        value = _header(scope, b"authorization")
        if value is None:
            return False
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(_digest(token.strip()), self._key_digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.is_open(scope) or self.authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 401, "headers": UNAUTHORIZED_HEADERS})
            await send({"type": "http.response.body", "body": UNAUTHORIZED_BODY})
        else:
            await _deny_websocket(scope, send)


async def _deny_websocket(scope: Scope, send: Send) -> None:
    """Refuse the handshake: a 401 response where the server supports it, else a close (HTTP 403)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": 401, "headers": UNAUTHORIZED_HEADERS})
        await send({"type": "websocket.http.response.body", "body": UNAUTHORIZED_BODY})
    else:
        await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
