"""Run by a vLLM venv's interpreter: which destinations vLLM's own server parser sets for each argv.

Prints one JSON line with every option string and its destination, then one line per argv (a JSON
list of lists in the file given): {"ok": bool, "error": str, "set": [destinations that changed]}."""

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

base = make_arg_parser(FlexibleArgumentParser())
defaults = vars(base.parse_args([]))
print(json.dumps({"options": {option: action.dest for option, action in base._option_string_actions.items()}}))
for argv in json.loads(Path(sys.argv[1]).read_text()):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = vars(make_arg_parser(FlexibleArgumentParser()).parse_args(argv))
        changed = sorted(k for k, v in parsed.items() if v != defaults.get(k))
        print(json.dumps({"ok": True, "error": "", "set": changed}))
    except (SystemExit, ValueError, AssertionError) as exc:
        text = stderr.getvalue() or str(exc)
        print(json.dumps({"ok": False, "error": text[text.find("error:"):].strip(), "set": []}))
