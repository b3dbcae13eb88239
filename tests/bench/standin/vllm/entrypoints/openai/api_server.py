"""The stand-in OpenAI server: /health, /metrics (spec-decode counters when k > 0), /v1/models,
/v1/chat/completions (for the smoke step), and /standin (its k) for the stand-in bench."""

import argparse
import http.server
import json
import os
import sys
import threading
import time

CRASH_LINE = ("Assertion error (/workspace/deep_gemm/include/smxx_fp8_fp4_paged_mqa_logits.hpp:233): "
              "next_n == 1 or next_n == 2")
DIE_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def _env_k(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def metrics(k: int, drafts: float) -> str:
    if k == 0:
        return "# speculative decoding is off\n"
    lines = [f'vllm:spec_decode_num_drafts_total{{model_name="m",engine="0"}} {drafts}',
             f'vllm:spec_decode_num_draft_tokens_total{{model_name="m",engine="0"}} {drafts * k}',
             f'vllm:spec_decode_num_accepted_tokens_total{{model_name="m",engine="0"}} {drafts * k * 0.75}']
    lines += [f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{model_name="m",engine="0",position="{i}"}} '
              f'{drafts * 0.75}' for i in range(k)]
    return "\n".join(lines) + "\n"


def handler(k: int, model: str) -> type[http.server.BaseHTTPRequestHandler]:
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
                self._send(json.dumps({"object": "list", "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "standin"}]}))
            elif self.path == "/metrics":
                self._send(metrics(k, counters["drafts"]), "text/plain; version=0.0.4")
            else:
                self.send_error(404)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            counters["drafts"] += 8
            self._send(json.dumps({
                "id": "standin", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "ok ok ok ok"}}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}}))

        def log_message(self, *_args: object) -> None:
            return

    return Handler


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="standin")
    parser.add_argument("--speculative-config")
    args, _ = parser.parse_known_args(argv)
    k = json.loads(args.speculative_config)["num_speculative_tokens"] if args.speculative_config else 0
    print(f"INFO non-default args: {{'port': {args.port}, 'k': {k}}}", flush=True)
    print("INFO Starting to load model standin...", flush=True)
    if k == _env_k("STANDIN_CRASH_K"):
        print(CRASH_LINE, flush=True)
        return 1
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler(k, args.served_model_name))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("INFO Application startup complete.", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
