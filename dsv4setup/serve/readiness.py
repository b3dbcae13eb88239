"""Waiting for a starting vLLM server: /health polling, phase from the log, failures, stalls.

vLLM binds its port before the engine has loaded (connections are accepted, nothing answers),
so readiness is the first 200 from /health, asked with short timeouts. Meanwhile the server's
output (appended to the step log) tells the phase and, on trouble, a known failure signature.
A stall is no new server output for `stall_timeout_s` while not healthy: a probable hang.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from dsv4setup.core.errors import StepError
from dsv4setup.serve.signatures import FailureMatch, match_failure, profile_set_command

# (phase, pattern) in startup order; the phase of the latest matching line wins
PHASES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(pattern)) for name, pattern in (
    ("resolving the model config", r"non-default args|Resolved architecture"),
    ("starting the engine", r"Initializing a V1 LLM engine|Initializing an LLM engine"),
    ("loading weights", r"Starting to load model|Loading safetensors checkpoint shards|Loading weights"),
    ("loading the MTP drafter", r"Loading drafter model|MTP draft model loaded"),
    ("compiling (torch.compile)", r"Starting torch\.compile|Dynamo bytecode transform|Compiling a graph"
                                  r"|Directly load the compiled graph"),
    ("allocating the KV cache", r"KV cache size|Available KV cache memory|KV cache initialized"),
    ("capturing CUDA graphs", r"Capturing CUDA graphs|Graph capturing finished"),
    ("starting the API server", r"Starting vLLM (API )?server on|Available routes are"),
    ("application startup complete", r"Application startup complete"),
))
# lines the step itself writes into the same log (StepLog sections, ctx.progress): not server activity
OWN_LINE_PREFIXES = ("-- ", "===== ")
WINDOW_CHARS = 512 * 1024  # the server output kept for signature matching

P2P_ADVICE = ("multi-GPU servers without working PCIe peer-to-peer hang like this: set env NCCL_P2P_DISABLE=1 "
              "and add --disable-custom-all-reduce (or set IOMMU passthrough / disable ACS in the BIOS); "
              "if the model is only slow to load, raise serve.stall_timeout_s")


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to host (wildcards -> loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(host: str, port: int) -> str:
    target = connect_host(host)
    return f"http://[{target}]:{port}" if ":" in target else f"http://{target}:{port}"


def health_status(host: str, port: int, timeout_s: float = 2.0, key: str | None = None) -> int | None:
    """HTTP status of GET /health (with the API key when given), or None when nothing answers in time."""
    conn = http.client.HTTPConnection(connect_host(host), port, timeout=timeout_s)
    try:
        conn.request("GET", "/health", headers={"Authorization": f"Bearer {key}"} if key else {})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class LogFollower:
    """Reads what the server appended to its log since an offset; remembers a window of it."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.offset = offset
        self.partial = ""
        self.window = ""

    def read_server_lines(self) -> list[str]:
        """New complete lines written by the server (the step's own lines left out)."""
        try:
            with self.path.open("rb") as fh:
                if fh.seek(0, 2) < self.offset:  # the log pump rotated it: the rest is in a new file
                    self.offset = 0
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        text = self.partial + data.decode("utf-8", errors="replace")
        *lines, self.partial = text.split("\n")
        ours = [line for line in lines if not line.startswith(OWN_LINE_PREFIXES)]
        if ours:
            self.window = (self.window + "\n".join(ours) + "\n")[-WINDOW_CHARS:]
        return ours


def phase_of(lines: list[str], current: str) -> str:
    phase = current
    for line in lines:
        for name, pattern in PHASES:
            if pattern.search(line):
                phase = name
    return phase


@dataclass(frozen=True)
class ReadyLimits:
    ready_timeout_s: float
    stall_timeout_s: float
    poll_s: float = 0.5
    heartbeat_s: float = 10.0
    health_timeout_s: float = 2.0


class ServerWatch:
    """What the wait loop needs to know about the process: exit code, or None while it runs."""

    def __init__(self, pid: int, returncode: Callable[[], int | None] | None = None) -> None:
        self.pid = pid
        self._returncode = returncode

    def exit_code(self) -> int | None:
        if self._returncode is not None:
            return self._returncode()
        try:  # not our child (an adopted server): alive or not, the code is unknown
            proc = psutil.Process(self.pid)
            return None if proc.status() != psutil.STATUS_ZOMBIE else -1
        except psutil.Error:
            return -1


ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b")


def _last_error_line(text: str) -> str | None:
    """The last line that names an error (the exception of a traceback), shortened."""
    for line in reversed(text.splitlines()):
        if ERROR_LINE.search(line):
            return line.strip()[:300]
    return None


def _known(match: FailureMatch, log: Path, when: str, host: str, port: int) -> StepError:
    known = match.failure.finding
    message = f"{known.summary} ({when}; {log} says: {match.excerpt!r})"
    if match.failure.id == "port-in-use":  # its fix names a free port, found now
        from dsv4setup.serve.process import port_in_use_error

        return port_in_use_error(host, port, message)
    return StepError(message, fix=known.fix, known_failure=known.id, command=known.command)


def wait_ready(watch: ServerWatch, host: str, port: int, follower: LogFollower, limits: ReadyLimits,
               progress: Callable[[str], None]) -> float:
    """Block until /health is 200; return the seconds it took. StepError on exit, signature, stall, timeout.

    The caller stops the server when this raises.
    """
    started = last_output = last_beat = time.monotonic()
    phase = "starting"
    progress(f"{phase} (0s)")
    while True:
        now = time.monotonic()
        elapsed = now - started
        lines = follower.read_server_lines()
        if lines:
            last_output = now
            new_phase = phase_of(lines, phase)
            if new_phase != phase:
                phase, last_beat = new_phase, now
                progress(f"{phase} ({elapsed:.0f}s)")
            if (match := match_failure(follower.window)) is not None:
                raise _known(match, follower.path, f"during startup, phase {phase}", host, port)
        code = watch.exit_code()
        if code is not None:
            time.sleep(0.3)  # let the last output reach the log
            follower.read_server_lines()
            if (match := match_failure(follower.window)) is not None:
                raise _known(match, follower.path, f"vLLM exited with code {code}", host, port)
            last_error = _last_error_line(follower.window)
            raise StepError(f"vLLM exited with code {code} during startup (phase: {phase})"
                            + (f": {last_error}" if last_error else f"; the reason is at the end of {follower.path}"),
                            fix="read the traceback at the end of the log (`dsv4setup logs serve -n 60`), fix "
                                 "the cause and run `dsv4setup up` again")
        status = health_status(host, port, limits.health_timeout_s)
        if status == 200:
            progress(f"ready: /health answers 200 after {time.monotonic() - started:.0f}s")
            return time.monotonic() - started
        if status == 503:
            match = match_failure(follower.window)
            if match is not None:
                raise _known(match, follower.path, "the engine died", host, port)
            raise StepError(f"vLLM answers /health with 503: its engine died (phase: {phase})",
                            fix=f"read the end of {follower.path} (`dsv4setup logs serve -n 60`)",
                            known_failure="engine-dead")
        if now - last_output >= limits.stall_timeout_s:
            raise StepError(f"no output from vLLM for {limits.stall_timeout_s:.0f}s and /health not ready "
                            f"(phase: {phase}): the server is probably hung", fix=P2P_ADVICE,
                            known_failure="serve-stall",
                            command=profile_set_command("env.NCCL_P2P_DISABLE=1",
                                                        "serve.disable_custom_all_reduce=true"))
        if elapsed >= limits.ready_timeout_s:
            longer = int(limits.ready_timeout_s * 2)
            raise StepError(f"vLLM not ready after {limits.ready_timeout_s:.0f}s (phase: {phase})",
                            fix="if the log still shows progress, raise serve.ready_timeout_s: "
                                 f"`dsv4setup profile set serve.ready_timeout_s={longer}`; see `dsv4setup logs serve`",
                            known_failure="serve-ready-timeout",
                            command=profile_set_command(f"serve.ready_timeout_s={longer}"))
        if now - last_beat >= limits.heartbeat_s:
            last_beat = now
            progress(f"{phase} ({elapsed:.0f}s, waiting for /health)")
        time.sleep(limits.poll_s)
