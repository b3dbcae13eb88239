"""A stand-in for the vLLM server where vLLM cannot be made to misbehave on demand.

A real subprocess: it prints vLLM-like lines, then behaves as told by --mode:
  ready     serve GET /health -> 200 after --delay seconds
  dead      serve GET /health -> 503 (the engine died)
  stall     print, then go silent without answering (a hang)
  signature print a known-failure line (--line), then go silent
  exit      print a traceback and exit with code 3
  stubborn  like stall, but ignore SIGTERM (only SIGKILL stops it)
With --child it also spawns a grandchild that sleeps (like vLLM's engine core) in its group.
"""

from __future__ import annotations

import argparse
import http.server
import signal
import subprocess
import sys
import threading
import time


def serve_health(port: int, status: int, delay: float) -> None:
    ready_at = time.monotonic() + delay

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if time.monotonic() < ready_at:
                self.close_connection = True  # no answer yet, like vLLM while it loads
                return
            self.send_response(status)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--line", default="")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"INFO non-default args: {{'port': {args.port}}}", flush=True)
    print("INFO Starting to load model /models/fake...", flush=True)
    if args.mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.mode == "exit":
        print("Traceback (most recent call last):\nRuntimeError: something broke", flush=True)
        return 3
    if args.mode == "signature":
        print(args.line, flush=True)
    if args.mode in ("ready", "dead"):
        serve_health(args.port, 200 if args.mode == "ready" else 503, args.delay)
        print("INFO Application startup complete.", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
