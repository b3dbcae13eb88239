"""Run by a vLLM venv's interpreter: parse each argv (JSON list of lists) with the parser that dsv4setup's
launcher builds from vLLM's own `bench serve` subcommand; print one JSON line per argv: {"ok", "error", "args"}."""

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

launcher = runpy.run_path(sys.argv[1])  # dsv4setup/bench/launcher.py, not as __main__: nothing runs
for argv in json.loads(Path(sys.argv[2]).read_text()):
    command, parser = launcher["build"]()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
        picked = {k: getattr(args, k) for k in ("backend", "base_url", "model", "tokenizer", "dataset_name",
                                                "random_input_len", "random_output_len", "num_prompts",
                                                "max_concurrency", "ignore_eos", "seed", "temperature",
                                                "save_result", "result_dir", "result_filename", "metadata",
                                                "dataset_path", "custom_output_len", "skip_chat_template",
                                                "disable_shuffle")}
        print(json.dumps({"ok": True, "error": "", "args": picked, "command": type(command).__name__}))
    except SystemExit:
        text = stderr.getvalue()
        print(json.dumps({"ok": False, "error": text[text.find("error:"):].strip(), "args": None}))
