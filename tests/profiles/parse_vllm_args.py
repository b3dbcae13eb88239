"""Run by a vLLM venv's interpreter: parse each argv (JSON list of lists) with vLLM's own server
argument parser; print one JSON line per argv: {"ok": bool, "error": str}."""

import contextlib
import io
import json
import sys
from pathlib import Path

try:  # 0.33 layout
    from vllm.entrypoints.common.cli_args import make_arg_parser
except ImportError:  # 0.32 layout
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

for argv in json.loads(Path(sys.argv[1]).read_text()):
    parser = make_arg_parser(FlexibleArgumentParser())
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(argv)
        print(json.dumps({"ok": True, "error": ""}))
    except SystemExit:
        text = stderr.getvalue()
        print(json.dumps({"ok": False, "error": text[text.find("error:"):].strip()}))
