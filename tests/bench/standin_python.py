"""Stands in for `<workdir>/venv/bin/python` in the fast bench tests: a real subprocess, no vLLM.

Installed as the serving venv's interpreter, it plays what dsv4setup starts from there:
  -c <probe>                                    the vLLM probe: answers as "vllm-standin 0.0.0"
  -m vllm.entrypoints.openai.api_server ...     the server: /health, /metrics, /v1/models,
                                                /v1/chat/completions (for the smoke step)
  ... --result-filename F ...                   `vllm bench serve`: writes a result JSON like vLLM's
Per k (the server reads it from --speculative-config), from the environment:
  STANDIN_CRASH_K  the server prints a known failure signature at startup and exits
  STANDIN_DIE_K    the server prints a known failure signature and dies during the benchmark
Only what cannot run in the fast suite (vLLM) stands in here; the e2e test runs the real one.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

CRASH_LINE = ("Assertion error (/workspace/deep_gemm/include/smxx_fp8_fp4_paged_mqa_logits.hpp:233): "
              "next_n == 1 or next_n == 2")
DIE_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _env_k(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def probe() -> int:
    print(json.dumps({"dist": "vllm-standin", "version": "0.0.0", "commit": "0123abc", "cli_metadata": False}))
    return 0


def server(argv: list[str]) -> int:
    port = int(_flag(argv, "--port") or 0)
    spec = _flag(argv, "--speculative-config")
    k = json.loads(spec)["num_speculative_tokens"] if spec else 0
    model = _flag(argv, "--served-model-name") or "standin"
    print(f"INFO non-default args: {{'port': {port}, 'k': {k}}}", flush=True)
    print("INFO Starting to load model standin...", flush=True)
    if k == _env_k("STANDIN_CRASH_K"):
        print(CRASH_LINE, flush=True)
        return 1
    counters = {"drafts": 0.0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, body: str, ctype: str = "application/json") -> None:
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path == "/health":
                self._send("")
            elif self.path == "/standin":
                self._send(json.dumps({"k": k}))
            elif self.path == "/standin/die":
                print(DIE_LINE, flush=True)
                os._exit(1)
            elif self.path == "/v1/models":
                self._send(json.dumps({"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                                                    "owned_by": "standin"}]}))
            elif self.path == "/metrics":
                self._send(_metrics(k, counters["drafts"]), "text/plain; version=0.0.4")
            else:
                self.send_error(404)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            counters["drafts"] += 8
            self._send(json.dumps({
                "id": "standin", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "ok ok ok ok"}}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}}))

        def log_message(self, *_args: object) -> None:
            return

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("INFO Application startup complete.", flush=True)
    while True:
        time.sleep(1)


def _metrics(k: int, drafts: float) -> str:
    if k == 0:
        return "# no speculative decoding\n"
    lines = [f'vllm:spec_decode_num_drafts_total{{model_name="m",engine="0"}} {drafts}',
             f'vllm:spec_decode_num_draft_tokens_total{{model_name="m",engine="0"}} {drafts * k}',
             f'vllm:spec_decode_num_accepted_tokens_total{{model_name="m",engine="0"}} {drafts * k * 0.75}']
    lines += [f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{model_name="m",engine="0",position="{i}"}} '
              f'{drafts * 0.75}' for i in range(k)]
    return "\n".join(lines) + "\n"


def bench(argv: list[str]) -> int:
    base = _flag(argv, "--base-url")
    k = json.loads(urllib.request.urlopen(f"{base}/standin", timeout=10).read())["k"]
    print(f"standin bench against {base} (k={k})", flush=True)
    if k == _env_k("STANDIN_DIE_K"):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{base}/standin/die", timeout=10)
        time.sleep(600)  # a real bench would now wait on its requests
    prompts, out_len = int(_flag(argv, "--num-prompts") or 1), int(_flag(argv, "--random-output-len") or 1)
    result = {"date": "20260101-000000", "backend": "vllm", "duration": 1.0, "completed": prompts, "failed": 0,
              "total_input_tokens": prompts * 16, "total_output_tokens": prompts * out_len,
              "request_throughput": float(prompts), "output_throughput": 100.0 + 10 * k,
              "total_token_throughput": 120.0 + 10 * k, "mean_ttft_ms": 20.0, "median_ttft_ms": 19.0,
              "p99_ttft_ms": 30.0, "mean_tpot_ms": 10.0 - k, "median_tpot_ms": 9.5 - k, "p99_tpot_ms": 12.0 - k,
              "mean_itl_ms": 10.0, "p99_itl_ms": 14.0, "mean_e2el_ms": 300.0}
    if k > 0:
        result.update({"spec_decode_acceptance_rate": 75.0, "spec_decode_acceptance_length": 1 + 0.75 * k,
                       "spec_decode_num_drafts": 10, "spec_decode_draft_tokens": 10 * k,
                       "spec_decode_accepted_tokens": int(7.5 * k),
                       "spec_decode_per_position_acceptance_rates": [0.75] * k})
    out = Path(_flag(argv, "--result-dir") or ".") / (_flag(argv, "--result-filename") or "result.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["-I"] and "-c" in argv:
        return probe()
    if "vllm.entrypoints.openai.api_server" in argv:
        return server(argv)
    if "--result-filename" in argv:
        return bench(argv)
    os.execv(sys.executable, [sys.executable, *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
