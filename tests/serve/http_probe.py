"""A LAN neighbour's requests (run by `ip netns exec` in another namespace; standard library only).

stdin: {"base_url": "http://H:P", "requests": [[METHOD, PATH, BODY or null], ...]}; the key, if any,
in the environment variable PROBE_KEY (sent as `Authorization: Bearer`). METHOD "WS" is a websocket
handshake (HTTP/1.1 Upgrade) on PATH. stdout: one JSON list, the HTTP status of each request in order.

`http_probe.py record ADDRESS PORT FILE`: a server that answers every GET with 200 and appends
[path, Authorization header or null] of each request to FILE as a JSON line.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def status(base_url: str, method: str, path: str, body: object, key: str | None) -> int:
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=120)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        if method == "WS":
            headers.update({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()})
            conn.request("GET", path, headers=headers)
        else:
            data = json.dumps(body).encode() if body is not None else None
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        response.read() if method != "WS" else None
        return response.status
    finally:
        conn.close()


def record(address: str, port: int, path: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps([self.path, self.headers.get("Authorization")]) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer((address, port), Handler).serve_forever()


def main() -> int:
    if sys.argv[1:2] == ["record"]:
        record(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return 0
    job = json.load(sys.stdin)
    key = os.environ.get("PROBE_KEY") or None
    print(json.dumps([status(job["base_url"], m, p, b, key) for m, p, b in job["requests"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
