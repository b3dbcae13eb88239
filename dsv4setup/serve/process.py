"""The vLLM server process: start it detached, record it, recognise it, stop it, clean up after it.

Identity. The server runs in its own session (process group = its pid). Its environment
carries DSV4SETUP_SERVE_ID=<random id>, inherited by every process vLLM spawns (engine core,
workers, resource tracker), even those that outlive the API server. "Ours" therefore means:
that id in the process environment; the API server itself must also have the recorded pid,
creation time and command line. Nothing else is ever signalled.

Leftovers. vLLM leaves ZMQ socket files (`<tmp>/<uuid>`) and `vllm_dist_*` files in the temp
directory, and SIGTERM does not remove them. The server gets its own TMPDIR (a fresh
`dsv4setup-serve-*` directory under the system temp dir, short enough for Unix socket paths),
recorded with the server and removed with it, so only what is clearly ours is deleted.

Only what is provably ours is unlinked, never a path a record merely names (run/serve.json is a file
anyone with the workdir can edit, and `down` may run as root): a shared-memory segment must sit
directly in /dev/shm, carry one of our segment names, be a regular file and belong to the effective
uid; the temp dir must carry our prefix, be a real directory and belong to the effective uid.
Anything else is refused and reported (StopReport.refused), and left alone.

Records: `<workdir>/run/serve.json` (the record) and `<workdir>/run/serve.pid` (the pid, for
people and scripts).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import psutil

from dsv4setup.core.errors import StepError
from dsv4setup.core.fsutil import atomic_write_json, atomic_write_text
from dsv4setup.core.state import now_iso
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.logpump import pump_argv
from dsv4setup.serve.signatures import profile_set_command
from dsv4setup.service.systemd import read_installed, systemctl

SERVE_ID_ENV = "DSV4SETUP_SERVE_ID"
TMP_PREFIX = "dsv4setup-serve-"
RAY_RECORD = "ray"  # run/ray.json: this node's Ray, started by the cluster step (multi-node profiles)
SHM_DIR = "/dev/shm/"
SHM_MARKERS = ("psm_", "-cpushm")  # torch's shared-memory segments, vLLM-CPU's TP all-reduce segments
NOT_FINGERPRINTED_ENV = ("VLLM_API_KEY",)  # a key change must not look like a new command line


@dataclass
class ServerRecord:
    pid: int
    create_time: float
    serve_id: str
    host: str
    port: int
    argv: list[str]
    command_fingerprint: str
    log: str
    log_offset: int  # where this server's output starts in the log
    tmpdir: str | None
    started_at: str = field(default_factory=now_iso)
    unit: str | None = None  # the systemd unit that runs it (dsv4setup service), None when started by `up`
    # the shared-memory segments it (and its ranks in this node's Ray) mapped once ready: removed when it
    # stops, even when its processes are gone by then (multi-node: a rank on another node died and took it down)
    segments: list[str] = field(default_factory=list)

    @property
    def pgid(self) -> int:
        return self.pid  # started with start_new_session: leader of its own group


def command_fingerprint(argv: Sequence[str], env: Mapping[str, str]) -> str:
    doc = {"argv": list(argv), "env": {k: v for k, v in sorted(env.items()) if k not in NOT_FINGERPRINTED_ENV}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def record_file(workdir: Workdir, name: str = "serve") -> Path:
    """`run/<name>.json`: the server's record ("serve"), or another process we started (the cluster's "ray")."""
    return workdir.run_dir / f"{name}.json"


def read_record(workdir: Workdir, name: str = "serve") -> ServerRecord | None:
    path = record_file(workdir, name)
    try:
        return ServerRecord(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return None  # unreadable: treated as no record; a live server is still found by its port


def write_record(workdir: Workdir, record: ServerRecord, name: str = "serve") -> None:
    atomic_write_json(record_file(workdir, name), asdict(record))
    atomic_write_text(workdir.run_dir / f"{name}.pid", f"{record.pid}\n")


def clear_record(workdir: Workdir, name: str = "serve") -> None:
    record_file(workdir, name).unlink(missing_ok=True)
    (workdir.run_dir / f"{name}.pid").unlink(missing_ok=True)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def leader_process(record: ServerRecord) -> psutil.Process | None:
    """The recorded API server process if it still exists (same pid and creation time)."""
    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > 0.05 or not _alive(proc):
            return None
        return proc
    except psutil.Error:
        return None


def is_ours(record: ServerRecord) -> tuple[bool, str]:
    """Is the recorded pid alive and our server: its command line is the recorded one, with our --port."""
    proc = leader_process(record)
    if proc is None:
        return False, f"server pid {record.pid} is not running"
    try:
        cmdline = proc.cmdline()
    except psutil.Error as exc:
        return False, f"cannot read the command line of pid {record.pid}: {exc}"
    if cmdline != record.argv or not _has_port(cmdline, record.port):
        return False, f"pid {record.pid} is not our server (command line: {' '.join(cmdline)[:200]})"
    return True, f"pid {record.pid} is our server on port {record.port}"


def _has_port(cmdline: Sequence[str], port: int) -> bool:
    pairs = zip(cmdline, cmdline[1:], strict=False)
    return any(a == "--port" and b == str(port) for a, b in pairs) or f"--port={port}" in cmdline


def server_processes(record: ServerRecord) -> list[psutil.Process]:
    """Every live process that carries this server's id in its environment (the whole vLLM tree)."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(SERVE_ID_ENV) == record.serve_id and _alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def port_holder(port: int) -> str | None:
    """'pid N (name)' of the process listening on a TCP port, when it can be found."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return None


def _bind_error(host: str, port: int) -> OSError | None:
    """Why host:port cannot be bound right now (None: it can)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not "in use"
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def free_port(host: str, taken: int, tries: int = 200) -> int | None:
    """The first port after `taken` that this machine lets us bind on host right now (checked, not guessed)."""
    for port in range(taken + 1, min(taken + 1 + tries, 65536)):
        if _bind_error(host, port) is None:
            return port
    return None


def port_in_use_error(host: str, port: int, message: str) -> StepError:
    """The `port-in-use` known failure, its fix naming a free port and the command that keeps it."""
    spare = free_port(host, port)
    who = f"`ss -ltnp 'sport = :{port}'` shows who holds port {port}"
    if spare is None:
        return StepError(message, fix=f"stop the process on port {port} ({who})", known_failure="port-in-use")
    return StepError(message, known_failure="port-in-use", command=profile_set_command(f"serve.port={spare}"),
                     fix=f"serve on port {spare} (checked free just now): `dsv4setup profile set serve.port={spare}`, "
                          f"then `dsv4setup up`; or stop the other process ({who})")


def check_port_free(host: str, port: int) -> None:
    """StepError when something already listens on host:port (or the address is not ours)."""
    exc = _bind_error(host, port)
    if exc is None:
        return
    if exc.errno == errno.EADDRINUSE:
        holder = port_holder(port)
        raise port_in_use_error(host, port, f"port {port} on {host} is already in use"
                                + (f" by {holder}" if holder else ""))
    if exc.errno == errno.EADDRNOTAVAIL:
        raise StepError(f"cannot bind {host}: not an address of this machine",
                        fix="use --host with one of this machine's addresses (`ip -br addr`), or 0.0.0.0 for all")
    raise StepError(f"cannot bind {host}:{port}: {exc.strerror}")


def new_tmpdir() -> str:
    """A fresh, short temp dir (Unix socket paths inside it must stay under 108 bytes)."""
    return tempfile.mkdtemp(prefix=TMP_PREFIX)


def start_server(argv: Sequence[str], env: Mapping[str, str], *, host: str, port: int, log_path: Path,
                 cwd: Path, tee: bool = False,
                 tmpdir: str | None = None) -> tuple[ServerRecord, subprocess.Popen[bytes]]:
    """Start argv (no shell) detached in its own session; its stdout+stderr go through the log pump
    (dsv4setup.serve.logpump: appended to log_path, rotated by size, every known secret redacted - the
    server's own output may echo the API key; also to our stdout with tee).

    `tmpdir` (from `new_tmpdir()`, when argv must name it) becomes its TMPDIR, removed when it stops."""
    serve_id = uuid.uuid4().hex
    tmpdir = tmpdir or new_tmpdir()
    full_env = {**os.environ, "TMPDIR": tmpdir, **env, SERVE_ID_ENV: serve_id}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    read_end, write_end = os.pipe()
    try:
        with log_path.open("ab") as pump_errors:
            # not part of the server's identity (no serve id): it ends by itself after the server's last line
            # it knows the secrets to redact from the server's environment
            subprocess.Popen(pump_argv(log_path, tee=tee), stdin=read_end, stdout=None if tee else subprocess.DEVNULL,
                             stderr=pump_errors, cwd=cwd, start_new_session=True, close_fds=True,
                             env={k: v for k, v in full_env.items() if k != SERVE_ID_ENV})
        proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=write_end,
                                stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True,
                                close_fds=True)
    except OSError as exc:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise StepError(f"cannot start the server {argv[0]}: {exc.strerror}",
                        fix="the serving venv is missing or broken: run `dsv4setup up --redo vllm`") from None
    finally:  # the pump ends when the server's last process closes its end
        os.close(read_end)
        os.close(write_end)
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        create_time = time.time()  # it exited at once; the readiness check reports why
    record = ServerRecord(pid=proc.pid, create_time=create_time, serve_id=serve_id, host=host, port=port,
                          argv=[str(a) for a in argv], command_fingerprint=command_fingerprint(argv, env),
                          log=str(log_path), log_offset=offset, tmpdir=tmpdir)
    return record, proc


@dataclass(frozen=True)
class Refusal:
    """A leftover we would not remove: the path as its record or the process maps named it, and why."""
    path: str
    reason: str


@dataclass
class StopReport:
    was_running: bool
    pids: list[int]
    forced: bool  # SIGKILL was needed
    elapsed_s: float
    survivors: list[int]  # processes that would not die (D state): reported, never ignored
    removed: list[str]  # leftovers removed (the server's temp dir, its shared-memory segments)
    refused: list[Refusal] = field(default_factory=list)  # named leftovers not provably ours: left alone


def _reap(pid: int) -> None:
    """Collect a zombie child of this process (the server is our child when we started it)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal_all(record: ServerRecord, procs: list[psutil.Process], sig: signal.Signals) -> None:
    group_members = False
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == record.pgid:
                group_members = True
                continue
            proc.send_signal(sig)
    if group_members:  # the group holds our processes only: its id cannot be reused while they live
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pgid, sig)


def _wait_gone(record: ServerRecord, procs: list[psutil.Process], deadline: float) -> list[psutil.Process]:
    """Wait for every process of the server to end. The ones found at the start are followed by
    handle: an exiting process loses its readable environment before its sockets close, so a
    re-scan by environment alone would call it gone while the port is still bound."""
    known = {p.pid: p for p in procs}
    while True:
        _reap(record.pid)
        known.update((p.pid, p) for p in server_processes(record))
        left = [p for p in known.values() if _alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def shm_segments(procs: list[psutil.Process]) -> set[str]:
    """The /dev/shm segments of torch and vLLM-CPU these processes map (left behind after SIGTERM)."""
    found: set[str] = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            found.update(m.path for m in proc.memory_maps() if segment_refusal(m.path) is None)
    return found


def segment_refusal(path: str) -> str | None:
    """Why `path` is not one of our shared-memory segments by place and name (None: it may be)."""
    if not path.startswith(SHM_DIR):
        return f"not in {SHM_DIR}"
    name = path[len(SHM_DIR):]
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        return f"not an entry directly in {SHM_DIR}"
    if not any(marker in name for marker in SHM_MARKERS):
        return "its name is not one of our segments' (*psm_*, *-cpushm*)"
    return None


def owner_refusal(mode: int, uid: int, euid: int, *, directory: bool = False) -> str | None:
    """Why a leftover with this lstat mode and owner is not ours to remove (None: it is)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if directory and not stat.S_ISDIR(mode):
        return "not a directory"
    if not directory and not stat.S_ISREG(mode):
        return "not a regular file"
    if uid != euid:
        return f"owned by uid {uid}, not by this user (uid {euid})"
    return None


def remove_segments(paths: Sequence[str]) -> tuple[list[str], list[Refusal]]:
    """Unlink the segments that are provably ours (see segment_refusal, owner_refusal); refuse the rest.
    Each entry is looked at and unlinked by name inside /dev/shm, opened once, so no link or `..` reaches
    another directory; a segment already gone is neither removed nor refused."""
    removed: list[str] = []
    refused: list[Refusal] = []
    try:
        shm = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        return [], [Refusal(p, f"cannot open {SHM_DIR}: {exc.strerror}") for p in paths]
    try:
        for path in sorted(paths):
            reason = segment_refusal(path)
            if reason is not None:
                refused.append(Refusal(path, reason))
                continue
            name = path[len(SHM_DIR):]
            try:
                info = os.stat(name, dir_fd=shm, follow_symlinks=False)
                reason = owner_refusal(info.st_mode, info.st_uid, os.geteuid())
                if reason is None:
                    os.unlink(name, dir_fd=shm)
                    removed.append(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                reason = f"cannot remove it: {exc.strerror}"
            if reason is not None:
                refused.append(Refusal(path, reason))
    finally:
        os.close(shm)
    return removed, refused


def tmpdir_refusal(path: str) -> str | None:
    """Why the recorded temp dir is not ours to delete (None: it is, or it is gone already)."""
    if not Path(path).name.startswith(TMP_PREFIX) or not os.path.isabs(path):
        return f"not a temp dir of ours (an absolute path named {TMP_PREFIX}*)"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    return owner_refusal(info.st_mode, info.st_uid, os.geteuid(), directory=True)


def _ranks(workdir: Workdir, name: str) -> list[psutil.Process]:
    """Multi-node: the server's vLLM ranks run in this node's Ray (they die with the server, unsignalled by us)."""
    ray = read_record(workdir, RAY_RECORD) if name == "serve" else None
    return server_processes(ray) if ray is not None else []


def _recorded(segments: object) -> list[str]:
    """The record's segments as a list whatever the file held (each item is judged by remove_segments)."""
    if isinstance(segments, list):
        return [s if isinstance(s, str) else json.dumps(s) for s in segments]
    return [] if segments is None else [json.dumps(segments)]


def remember_segments(workdir: Workdir, record: ServerRecord) -> ServerRecord:
    """Record the shared-memory segments the ready server and its ranks map (see ServerRecord.segments)."""
    found = shm_segments(server_processes(record) + _ranks(workdir, "serve"))
    remembered = replace(record, segments=sorted(found))
    write_record(workdir, remembered)
    return remembered


def stop_orphans(workdir: Workdir, known_id: str | None, grace_s: float = 15.0) -> list[int]:
    """Stop servers started in this workdir that no record knows (a run killed between starting a
    server and recording it leaves one): our id in their environment, the workdir their cwd.
    Returns the pids that would not stop (empty when all did)."""
    ray = read_record(workdir, RAY_RECORD)
    known = {known_id, ray.serve_id if ray else None}  # this node's Ray (multi-node) is recorded, not an orphan
    orphans = []
    for proc in psutil.process_iter():
        try:
            serve_id = proc.environ().get(SERVE_ID_ENV)
            if serve_id and serve_id not in known and proc.cwd() == str(workdir.root) and _alive(proc):
                orphans.append(proc)
        except psutil.Error:
            continue
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for proc in orphans:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        orphans = psutil.wait_procs(orphans, timeout=wait_s)[1]
        if not orphans:
            break
    return sorted(p.pid for p in orphans) if orphans else []


def stop_server(workdir: Workdir, record: ServerRecord, grace_s: float = 15.0, *, name: str = "serve",
                via_systemd: bool = True) -> StopReport:
    """SIGTERM to the server's group (and any straggler with our id), SIGKILL after grace_s, clean up:
    its temp dir and the shared-memory segments its processes (and its ranks in this node's Ray) mapped.

    A server run by a systemd unit is stopped with `systemctl stop` (its runner then does the
    above), so that systemd does not restart it: never two servers, never one fought over.
    """
    started = time.monotonic()
    procs = server_processes(record)
    # read before they go (Ray ends the ranks on its own), with those recorded once it was ready
    segments = {*shm_segments(procs + _ranks(workdir, name)), *_recorded(record.segments)}
    pids = sorted(p.pid for p in procs)
    if via_systemd and record.unit:
        unit = read_installed(workdir)
        if unit is not None and unit.name == record.unit:
            systemctl(unit, "stop", unit.name, timeout_s=grace_s + 90)
            return StopReport(was_running=bool(procs), pids=pids, forced=False,
                              elapsed_s=round(time.monotonic() - started, 2),
                              survivors=sorted(p.pid for p in procs if _alive(p)),
                              removed=[record.tmpdir] if record.tmpdir and not Path(record.tmpdir).exists() else [])
    forced = False
    left: list[psutil.Process] = []
    if procs:
        _signal_all(record, procs, signal.SIGTERM)
        left = _wait_gone(record, procs, time.monotonic() + grace_s)
        if left:
            forced = True
            _signal_all(record, left, signal.SIGKILL)
            left = _wait_gone(record, left, time.monotonic() + 5.0)
    _reap(record.pid)
    removed: list[str] = []
    refused: list[Refusal] = []
    if record.tmpdir:
        reason = tmpdir_refusal(str(record.tmpdir))
        if reason is not None:
            refused.append(Refusal(str(record.tmpdir), reason))
        elif Path(record.tmpdir).is_dir():
            shutil.rmtree(record.tmpdir, ignore_errors=True)
            removed.append(record.tmpdir)
    if not left:
        unlinked, refused_segments = remove_segments(list(segments))
        removed += unlinked
        refused += refused_segments
        clear_record(workdir, name)
    return StopReport(was_running=bool(procs), pids=pids, forced=forced,
                      elapsed_s=round(time.monotonic() - started, 2), survivors=sorted(p.pid for p in left),
                      removed=removed, refused=refused)
