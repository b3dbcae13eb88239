"""The stand-in `vllm bench serve` subcommand: asks the server its k and saves a result JSON shaped like vLLM's."""

import argparse
import contextlib
import json
import os
import time
import urllib.request
from pathlib import Path


class BenchmarkServingSubcommand:
    name = "serve"
    help = "Benchmark the online serving throughput (stand-in)."

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        for flag in ("--base-url", "--result-dir", "--result-filename"):
            parser.add_argument(flag, required=True)
        parser.add_argument("--num-prompts", type=int, default=1)
        parser.add_argument("--random-output-len", type=int, default=1)
        parser.add_argument("--dataset-path")  # the custom dataset: every prompt of it is one request
        parser.add_argument("--save-detailed", action="store_true")

    def validate(self, args: argparse.Namespace) -> None:
        return None

    @staticmethod
    def cmd(args: argparse.Namespace) -> None:
        k = json.loads(urllib.request.urlopen(f"{args.base_url}/standin", timeout=10).read())["k"]
        print(f"standin bench against {args.base_url} (k={k})", flush=True)
        if k == int(os.environ.get("STANDIN_DIE_K") or -1):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{args.base_url}/standin/die", timeout=10)
            time.sleep(600)  # a real bench would now wait on its requests
        if args.result_filename == os.environ.get("STANDIN_FAIL_RESULT"):
            raise RuntimeError("standin: this run fails on purpose")
        prompts = args.num_prompts
        if args.dataset_path:  # as vLLM's custom dataset reads it: a JSONL of {"prompt": ...}
            lines = Path(args.dataset_path).read_text().splitlines()
            if len(lines) != prompts or not all(json.loads(line)["prompt"] for line in lines):
                raise SystemExit(f"standin: {args.dataset_path} holds {len(lines)} prompts, asked for {prompts}")
        result = {"date": "20260101-000000", "backend": "vllm", "duration": 1.0, "completed": prompts, "failed": 0,
                  "total_input_tokens": prompts * 16, "total_output_tokens": prompts * args.random_output_len,
                  "request_throughput": float(prompts), "output_throughput": 100.0 + 10 * k,
                  "total_token_throughput": 120.0 + 10 * k, "mean_ttft_ms": 20.0, "median_ttft_ms": 19.0,
                  "p99_ttft_ms": 30.0, "mean_tpot_ms": 10.0 - k, "median_tpot_ms": 9.5 - k, "p99_tpot_ms": 12.0 - k,
                  "mean_itl_ms": 10.0, "p99_itl_ms": 14.0, "mean_e2el_ms": 300.0}
        if k > 0:
            result.update({"spec_decode_acceptance_rate": 75.0, "spec_decode_acceptance_length": 1 + 0.75 * k,
                           "spec_decode_num_drafts": 10, "spec_decode_draft_tokens": 10 * k,
                           "spec_decode_accepted_tokens": int(7.5 * k),
                           "spec_decode_per_position_acceptance_rates": [0.75] * k})
        if args.save_detailed:  # greedy text per request; STANDIN_FLIP_K changes the second one at that k
            texts = [f"standin answer {i}: ok ok ok ok" for i in range(prompts)]
            if k == int(os.environ.get("STANDIN_FLIP_K") or -1) and prompts > 1:
                texts[1] = texts[1][:20] + "no" + texts[1][22:]
            result["generated_texts"] = texts
        out = Path(args.result_dir) / args.result_filename
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result))
