"""vLLM's own `vllm bench serve`: which vLLM the serving venv holds, the command line, running it.

The load generator and every figure come from vLLM's benchmark; this module only builds its
command line (random dataset or a prompt set, fixed lengths and seed, --ignore-eos, greedy), runs it from
the serving venv and reads the JSON it saves. While it runs, the server is watched: a
server that dies or prints a known failure signature ends the run at once (recorded as a
failed cell), and so does silence from both for the profile's stall timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dsv4setup.bench.matrix import TEMPERATURE, Cell
from dsv4setup.core.proc import StepLog
from dsv4setup.serve.readiness import LogFollower
from dsv4setup.serve.signatures import FailureMatch, match_failure

LAUNCHER = Path(__file__).with_name("launcher.py")
CLI_MODULE = "vllm.entrypoints.cli.main"
PERCENTILE_METRICS = "ttft,tpot,itl,e2el"
METRIC_PERCENTILES = "50,99"
TAIL_LINES = 40

# Runs in the serving venv with -I: which distribution provides `vllm`, its version and commit
# (vllm/_version.py, read without importing vllm), and whether vLLM's CLI can find "vllm" metadata.
PROBE_SCRIPT = r"""
import importlib.metadata as md, importlib.util, json, pathlib, runpy
out = {"dist": None, "version": None, "commit": None, "cli_metadata": False}
try:
    md.version("vllm")
    out["cli_metadata"] = True
except md.PackageNotFoundError:
    pass
dists = md.packages_distributions().get("vllm") or []
if dists:
    out["dist"] = dists[0]
    out["version"] = md.version(dists[0])
spec = importlib.util.find_spec("vllm")
if spec is not None and spec.submodule_search_locations:
    f = pathlib.Path(list(spec.submodule_search_locations)[0]) / "_version.py"
    if f.is_file():
        ns = runpy.run_path(str(f))
        out["commit"] = ns.get("__commit_id__") or ns.get("commit_id")
        out["version"] = out["version"] or ns.get("__version__")
print(json.dumps(out))
"""


@dataclass(frozen=True)
class VllmInfo:
    """The vLLM in the serving venv, as the venv itself says."""

    python: str
    dist: str | None
    version: str | None
    commit: str | None
    cli_metadata: bool  # `vllm.entrypoints.cli.main` can start (it needs metadata named "vllm")
    error: str | None = None
    via_launcher: bool = False  # a prompt set is measured: the launcher reads it (see launcher.py)

    @property
    def runner(self) -> str:
        """How `vllm bench serve` is started: vLLM's CLI module, or our launcher of the same subcommand."""
        return CLI_MODULE if self.cli_metadata and not self.via_launcher else "dsv4setup launcher of vllm bench serve"

    def for_prompt_sets(self) -> VllmInfo:
        """Started by the launcher: vLLM's `custom` dataset needs pandas, which only vLLM's `bench` extra
        installs; the launcher gives it a loader of the same JSONL without pandas where pandas is missing."""
        return replace(self, via_launcher=True)


def probe_vllm(python: Path, timeout_s: float = 60.0) -> VllmInfo:
    """Ask the serving venv's interpreter; never raises (a broken venv gives error and nulls)."""
    try:
        done = subprocess.run([str(python), "-I", "-c", PROBE_SCRIPT], capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return VllmInfo(str(python), None, None, None, False, f"cannot run {python}: {exc}")
    try:
        facts = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return VllmInfo(str(python), None, None, None, False, f"{python} could not tell its vLLM: {tail}")
    return VllmInfo(str(python), facts.get("dist"), facts.get("version"), facts.get("commit"),
                    bool(facts.get("cli_metadata")))


@dataclass(frozen=True)
class BenchTarget:
    """What the bench talks to: the server and the model it serves."""

    base_url: str
    served_model_name: str
    tokenizer: str  # the checkpoint directory
    tokenizer_mode: str | None = None
    trust_remote_code: bool = False


def tokenizer_mode(extra_args: list[str]) -> str | None:
    """The server's --tokenizer-mode (from serve.extra_args): the bench must tokenize the same way."""
    for i, arg in enumerate(extra_args):
        if arg == "--tokenizer-mode" and i + 1 < len(extra_args):
            return extra_args[i + 1]
        if arg.startswith("--tokenizer-mode="):
            return arg.split("=", 1)[1]
    return None


def dataset_flags(cell: Cell, prompts_file: Path | None, num_prompts: int) -> list[str]:
    """Which prompts: vLLM's random dataset at the shape's lengths, or our converted prompt set (datasets.py)
    as vLLM's `custom` dataset, every prompt once, in order, sent as written (no chat template)."""
    shape = cell.shape
    if prompts_file is None:
        return ["--dataset-name", "random", "--random-input-len", str(shape.input_len),
                "--random-output-len", str(shape.output_len), "--random-range-ratio", "0.0",
                "--num-prompts", str(num_prompts)]
    return ["--dataset-name", "custom", "--dataset-path", str(prompts_file), "--custom-output-len",
            str(shape.output_len), "--skip-chat-template", "--disable-shuffle", "--num-prompts", str(num_prompts)]


def bench_flags(cell: Cell, target: BenchTarget, seed: int, result_dir: Path, result_file: str,
                run_id: str, prompts_file: Path | None = None, num_prompts: int | None = None) -> list[str]:
    """The arguments of `vllm bench serve` for one cell (the same on every machine but for paths and URL)."""
    shape = cell.shape
    flags = ["--backend", "vllm", "--base-url", target.base_url, "--model", target.served_model_name,
             "--tokenizer", target.tokenizer,
             *dataset_flags(cell, prompts_file, shape.num_prompts if num_prompts is None else num_prompts),
             "--max-concurrency", str(cell.concurrency),
             "--num-warmups", str(cell.concurrency), "--ignore-eos", "--seed", str(seed),
             "--temperature", str(TEMPERATURE), "--percentile-metrics", PERCENTILE_METRICS,
             "--metric-percentiles", METRIC_PERCENTILES, "--disable-tqdm", "--label", "dsv4setup",
             "--metadata", f"dsv4setup_run={run_id}", f"k={cell.k}", f"shape={shape.name}",
             "--save-result", "--save-detailed", "--result-dir", str(result_dir), "--result-filename", result_file]
    if target.tokenizer_mode:
        flags += ["--tokenizer-mode", target.tokenizer_mode]
    if target.trust_remote_code:
        flags.append("--trust-remote-code")
    return flags


def bench_argv(info: VllmInfo, flags: list[str]) -> list[str]:
    """vLLM's CLI where it can start, else the launcher of the same subcommand (see launcher.py).

    -P keeps the script's or current directory off sys.path (nothing there can shadow a module).
    """
    if info.runner == CLI_MODULE:
        return [info.python, "-P", "-m", CLI_MODULE, "bench", "serve", *flags]
    return [info.python, "-P", str(LAUNCHER), *flags]


def launcher_argv(info: VllmInfo, runs: list[list[str]], progress: Path) -> list[str]:
    """One launcher for several `vllm bench serve` runs against one server, one after another (see launcher.py);
    each finished run gets a line in `progress`."""
    argv = [info.python, "-P", str(LAUNCHER), "--dsv4setup-progress", str(progress)]
    for index, flags in enumerate(runs):
        argv += [*(["--dsv4setup-next"] if index else []), *flags]
    return argv


def read_progress(path: Path) -> dict[str, dict[str, Any]]:
    """The launcher's record of its finished runs, by result file name (a line cut short by a kill is skipped)."""
    done: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("result"), str):
            done[entry["result"]] = entry
    return done


class BenchRunError(Exception):
    """`vllm bench serve` did not produce a result: why, the server's known failure if any, the output tail."""

    def __init__(self, message: str, *, fix: str | None = None, known: FailureMatch | None = None,
                 excerpt: str | None = None, tail: list[str] | None = None, server_died: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.known = known
        self.excerpt = excerpt
        self.tail = tail or []
        self.server_died = server_died


@dataclass
class ServerProbe:
    """What the watchdog needs of the server under test: is it alive, and its log since it started."""

    alive: Callable[[], bool]
    log: LogFollower


@dataclass
class Watch:
    stall_timeout_s: float
    poll_s: float = 0.25
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))


def _pump(stream: Any, log: StepLog, watch: Watch, seen: list[float]) -> None:
    for line in stream:
        log.write(line)
        watch.tail.append(line.rstrip("\n"))
        seen[0] = time.monotonic()


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def matched_line(text: str) -> tuple[FailureMatch | None, str | None]:
    """The known failure in a piece of server output, and the whole line it was found on (for people)."""
    known = match_failure(text)
    if known is None:
        return None, None
    lines = [line for line in text.splitlines() if known.excerpt and known.excerpt in line]
    return known, (lines[-1].strip()[:300] if lines else known.excerpt)


def run_bench(argv: list[str], env: Mapping[str, str], log: StepLog, server: ServerProbe, watch: Watch,
              cwd: Path) -> None:
    """Run argv (its own process group), output into the log, watching the server; BenchRunError on failure.

    `env` is added to the inherited environment and never logged (it may hold the API key).
    """
    log.line("$ " + " ".join(argv))
    server.log.read_server_lines()  # only what the server prints from now on is this run's
    server.log.window = ""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                env={**os.environ, **env}, cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        raise BenchRunError(f"cannot start vllm bench serve ({argv[0]}): {exc.strerror}",
                            fix="the serving venv is missing or broken: run `dsv4setup up --redo vllm`") from None
    seen = [time.monotonic()]
    pump = threading.Thread(target=_pump, args=(proc.stdout, log, watch, seen), daemon=True)
    pump.start()
    try:
        code = _watch(proc, server, watch, seen)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        pump.join(timeout=10)
    log.line(f"[exit {code}]")
    if code != 0:
        known, line = matched_line(server.log.window + "\n" + "\n".join(watch.tail))
        raise BenchRunError(f"vllm bench serve exited with code {code}: {_last_error(watch.tail)}",
                            fix=known.failure.finding.fix if known else f"the output is in {log.path}", known=known,
                            excerpt=line, tail=list(watch.tail))


def _watch(proc: subprocess.Popen[str], server: ServerProbe, watch: Watch, seen: list[float]) -> int:
    """Wait for the bench to exit; stop it when the server dies, fails known, or everything goes silent."""
    while True:
        code = proc.poll()
        if code is not None:
            return code
        if server.log.read_server_lines():
            seen[0] = max(seen[0], time.monotonic())
        known = match_failure(server.log.window)
        if known is not None or not server.alive():
            _kill_group(proc)
            time.sleep(0.3)  # the server's last words
            server.log.read_server_lines()
            known, line = matched_line(server.log.window)
            what = "the server failed" if known else "the server died"
            said = f": {known.failure.finding.summary}" if known else ""
            raise BenchRunError(f"{what} during the benchmark{said}",
                                fix=known.failure.finding.fix if known else f"read the end of {server.log.path}",
                                known=known, excerpt=line, tail=list(watch.tail), server_died=True)
        if time.monotonic() - seen[0] >= watch.stall_timeout_s:
            _kill_group(proc)
            raise BenchRunError(f"no output from the benchmark or the server for {watch.stall_timeout_s:.0f}s: "
                                "stopped it as hung", fix="if the server is only slow, raise serve.stall_timeout_s "
                                                           "(--set serve.stall_timeout_s=SECONDS)",
                                tail=list(watch.tail))
        time.sleep(watch.poll_s)


def _last_error(tail: deque[str] | list[str]) -> str:
    """The most telling line of a failed run's output: the last exception line, else the last line."""
    lines = [line.strip() for line in tail if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def read_result(path: Path) -> dict[str, Any]:
    """The JSON vLLM saved; BenchRunError when it is missing or not an object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchRunError(f"vllm bench serve exited cleanly but wrote no result at {path}",
                            fix="check that this vLLM's bench supports --save-result/--result-filename") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchRunError(f"the result {path} cannot be read: {exc}") from None
    if not isinstance(doc, dict):
        raise BenchRunError(f"the result {path} is not a JSON object")
    return doc
