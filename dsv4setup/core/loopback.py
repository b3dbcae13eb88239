"""Requests to our own server never go through a proxy.

A proxy set in the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY) would otherwise receive
every request to 127.0.0.1 that NO_PROXY does not cover, with the API key in its
Authorization header. In-process clients ignore the proxy settings altogether; child
processes (vLLM's bench client) get NO_PROXY extended with loopback and the server's host.
Nor do they follow a redirect: urllib would carry the Authorization header to wherever the
Location points, another host included; a 3xx comes back as an HTTPError with its status.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from typing import Any

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect (the request carries the API key): urllib raises HTTPError for the 3xx instead."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


def direct_opener() -> urllib.request.OpenerDirector:
    """A urllib opener that connects directly whatever the proxy environment says, and follows no redirect."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


def no_proxy_env(host: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """NO_PROXY and no_proxy for a child process: what the environment had, plus loopback and `host`."""
    environ = os.environ if environ is None else environ
    had = environ.get("NO_PROXY") or environ.get("no_proxy") or ""
    hosts = [h.strip() for h in had.split(",") if h.strip()]
    hosts += [h for h in (*LOOPBACK_HOSTS, host) if h and h not in hosts]
    value = ",".join(hosts)
    return {"NO_PROXY": value, "no_proxy": value}
