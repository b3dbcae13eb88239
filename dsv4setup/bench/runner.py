"""The matrix on the machine: a server per k, `vllm bench serve` per cell, rows appended as they come.

The cells of one server, shape and concurrency level (a prompt set's categories) are measured by one
bench process, one after another (launcher.py), so each category's counters are its own while vLLM's
bench starts once per k instead of once per category.

Servers are started, adopted and stopped by the serve step's own code (ServeStep.run: same
command rendering, API key, port check, readiness, known failures, stall detection); their
output goes to `logs/serve.log` like any server of the workdir. A k whose server does not
come up, or dies under load, becomes failed rows (with the known failure it matched) and
the matrix goes on with the next k.

At the end the server is put back as the bench found it: running at the configured k
(or at the k just applied with --apply-best), or stopped if none ran. A restarted server
gets the smoke step's own test again, so `up` verifies serve and smoke as done. An
interrupted bench stops a server that runs another k than configured (the next `up`
starts the right one) and leaves the configured one running.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from dsv4setup.bench.client import (
    CLI_MODULE,
    BenchRunError,
    BenchTarget,
    ServerProbe,
    VllmInfo,
    Watch,
    bench_argv,
    bench_flags,
    launcher_argv,
    matched_line,
    probe_vllm,
    read_progress,
    read_result,
    run_bench,
    tokenizer_mode,
)
from dsv4setup.bench.fingerprint import (
    checkpoint_part,
    driver_part,
    hardware_part,
    now_utc,
    patches_part,
    probe_hardware,
    profile_part,
    vllm_part,
    workload_part,
)
from dsv4setup.bench.matrix import Cell, MatrixPlan, execution_order
from dsv4setup.bench.rows import CellFailure, append_rows, build_row, judge_metrics, metrics_from_result
from dsv4setup.core.errors import StepError
from dsv4setup.core.loopback import no_proxy_env
from dsv4setup.core.proc import StepLog
from dsv4setup.core.state import State
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import RunContext
from dsv4setup.profiles.model import Profile
from dsv4setup.profiles.paths import checkpoint_dir
from dsv4setup.serve.apikey import client_api_key
from dsv4setup.serve.launch import effective_profile, launch, render_command
from dsv4setup.serve.manager import server_state
from dsv4setup.serve.process import (
    ServerRecord,
    check_port_free,
    command_fingerprint,
    is_ours,
    leader_process,
    read_record,
    stop_server,
)
from dsv4setup.serve.readiness import LogFollower, base_url, health_status
from dsv4setup.smoke.report import read_report, report_file, smoke_test

PORT_RELEASE_S = 30.0


class MatrixProgress(Protocol):
    """Structured progress for a display (the CLI's bar); the step log gets the same as text."""

    def start(self, total: int) -> None: ...
    def status(self, text: str) -> None: ...
    def advance(self, row: dict[str, Any]) -> None: ...


class NoProgress:
    """No display (the bench step inside `up`, and `bench --json`)."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def start(self, total: int) -> None:
        return None

    def status(self, text: str) -> None:
        return None

    def advance(self, row: dict[str, Any]) -> None:
        return None


def with_k(profile: Profile, k: int) -> Profile:
    """The profile serving k speculative tokens (k=0: no speculative config at all)."""
    return profile.model_copy(update={"spec": profile.spec.model_copy(update={"num_speculative_tokens": k})})


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


@dataclass
class BenchSession:
    """Everything one bench run needs; the bench step and the CLI build it from their context."""

    workdir: Workdir
    profile: Profile  # as configured: the k the server returns to
    state: State  # earlier steps' outputs (render, fingerprint)
    log: StepLog  # the bench's own log
    plan: MatrixPlan
    base_profile: Profile | None = None  # the profile file's own values (for the overrides in the fingerprint)
    host: str | None = None  # --host, when the server binds another address than the profile's
    say: Callable[[str], None] = lambda _msg: None  # ctx.progress
    display: MatrixProgress = field(default_factory=NoProgress)
    nvml: ModuleType | None = None  # tests: a fake NVML module
    run_id: str = field(default_factory=new_run_id)

    @property
    def results_file(self) -> Path:
        return self.workdir.bench_dir / "results.jsonl"

    @property
    def raw_dir(self) -> Path:
        return self.workdir.bench_dir / "raw" / self.run_id

    def prompts_file(self, category: str | None) -> Path | None:
        """One category of the prompt set as vLLM's `custom` dataset (kept beside the raw results); None: random."""
        prompts = self.plan.prompts
        if prompts is None or category is None:
            return None
        path = self.raw_dir / f"prompts-{category}.jsonl"  # category names are checked to be file names
        return path if path.exists() else prompts.only(category).write_custom(path)

    def context(self, profile: Profile, log: StepLog | None = None, label: str = "") -> RunContext:
        options = {"host": self.host} if self.host else {}
        prefix = f"{label}: " if label else ""
        return RunContext(self.workdir, profile, self.state, options, log,
                          lambda msg: self.tell(f"{prefix}{msg}"))

    def tell(self, text: str) -> None:
        self.say(text)
        self.display.status(text)


@dataclass
class ServerUp:
    record: ServerRecord
    reused: bool
    ready_s: float
    auth: bool


@dataclass
class MatrixRun:
    run_id: str
    order: list[int]
    rows: list[dict[str, Any]]
    servers: list[dict[str, Any]]
    vllm: VllmInfo
    started_at: str
    finished_at: str
    was_running: bool


def render_for(session: BenchSession, profile: Profile) -> tuple[list[str], dict[str, str]]:
    ctx = session.context(profile)
    return render_command(ctx, effective_profile(ctx))


def setup_fingerprint(profile: Profile, state: State, base: Profile | None, argv: list[str], env: dict[str, str],
                      info: VllmInfo, hardware_snapshot: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint parts shared by every row of a run (each row adds its workload and date)."""
    outputs = {name: dict(rec.outputs) for name, rec in state.steps.items()}
    inputs = {name: dict(rec.fingerprint_inputs) for name, rec in state.steps.items()}
    return {"vllm": vllm_part(info, outputs.get("vllm", {})),
            "patches": patches_part(profile, outputs.get("patches", {})),
            "checkpoint": checkpoint_part(profile, outputs.get("download", {}), inputs.get("download", {})),
            "profile": profile_part(profile, base, argv, env),
            "hardware": hardware_part(hardware_snapshot, profile.serve.tensor_parallel_size),
            "driver": driver_part(hardware_snapshot)}


def row_fingerprint(base_fp: dict[str, Any], cell: Cell, plan: MatrixPlan, date: str) -> dict[str, Any]:
    return {**base_fp, "workload": workload_part(cell.shape, plan.seed, plan.prompts), "date": date}


def _stop_if_other(session: BenchSession, fingerprint: str) -> None:
    """Stop our running server when it runs another command line than the one wanted next."""
    record = read_record(session.workdir)
    if record is None or record.command_fingerprint == fingerprint:
        return
    if is_ours(record)[0]:
        _stop(session, record)


def _stop(session: BenchSession, record: ServerRecord) -> None:
    """Stop our server (and its leftovers) and wait until its port is free for the next one."""
    session.tell(f"stopping the server (pid {record.pid})")
    report = stop_server(session.workdir, record)
    session.log.line(f"stopped server pid {record.pid} (processes {report.pids}) in {report.elapsed_s}s"
                     + (" (SIGKILL needed)" if report.forced else ""))
    _wait_port_released(record, session.log)


def _wait_port_released(record: ServerRecord, log: StepLog, timeout_s: float = PORT_RELEASE_S) -> None:
    """Wait until the stopped server's port can be bound again.

    A process whose memory is already torn down has no readable environment any more, so the
    stop looks finished while the kernel has not yet closed its sockets (the larger the process,
    the longer); the next server on the same port would then fail with "port in use".
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check_port_free(record.host, record.port)
            return
        except StepError:
            if time.monotonic() >= deadline:
                log.line(f"port {record.port} still in use {timeout_s:.0f}s after the server stopped")
                return  # the next start reports who holds it
            time.sleep(0.1)


def ensure_server(session: BenchSession, profile: Profile, label: str) -> ServerUp | CellFailure:
    """The server for this profile, healthy: adopted when it already runs, else started by ServeStep.run."""
    argv, env = render_for(session, profile)
    wanted = command_fingerprint(argv, env)
    _stop_if_other(session, wanted)
    before = read_record(session.workdir)
    reused = before is not None and before.command_fingerprint == wanted and is_ours(before)[0]
    log_path = session.workdir.log_file("serve")
    offset = log_path.stat().st_size if log_path.exists() else 0
    with StepLog(log_path) as serve_log:
        serve_log.section(f"bench {session.run_id}: server for {label}")
        try:
            outputs = launch(session.context(profile, serve_log, label))
        except StepError as exc:
            session.log.line(f"{label}: the server did not come up: {exc.message}")
            return CellFailure(exc.message, exc.fix, exc.known_failure, _said(log_path, offset, exc), phase="serve")
    record = read_record(session.workdir)
    if record is None:  # ServeStep.run returned, so it wrote one: a vanished record is a bug
        raise StepError(f"the server for {label} is up but its record {session.workdir.run_dir} is gone")
    return ServerUp(record, reused, float(outputs.get("ready_s") or 0.0), bool(outputs.get("auth")))


def _said(log_path: Path, offset: int, exc: StepError) -> str | None:
    """The server's line behind a known startup failure (from its output in the serve log)."""
    if exc.known_failure is None:
        return None
    with log_path.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", errors="replace")
    known, line = matched_line(text)
    return line if known is not None and known.failure.id == exc.known_failure else None


def _server_alive(record: ServerRecord) -> Callable[[], bool]:
    def alive() -> bool:
        return leader_process(record) is not None and health_status(record.host, record.port) != 503

    return alive


def _result_file(cell: Cell) -> str:
    return f"k{cell.k}-{cell.shape.name}-c{cell.concurrency}" + (f"-{cell.category}" if cell.category else "") + ".json"


def _run_cells(session: BenchSession, info: VllmInfo, cells: list[Cell], server: ServerUp, env: dict[str, str],
               base_fp: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The cells of one shape and concurrency level (a prompt set's categories, or one random cell), measured one
    after another by one `vllm bench serve` process; their rows and whether the server died.

    Through the launcher (a prompt set) its progress file says which runs finished, when, and which failed.
    """
    profile = session.profile
    started_at, t0 = now_utc(), time.monotonic()
    target = BenchTarget(base_url(server.record.host, server.record.port), profile.serve.served_model_name,
                         str(checkpoint_dir(profile, session.workdir)), tokenizer_mode(profile.serve.extra_args),
                         profile.serve.trust_remote_code)
    runs = [bench_flags(cell, target, session.plan.seed, session.raw_dir, _result_file(cell), session.run_id,
                        session.prompts_file(cell.category), session.plan.num_prompts(cell)) for cell in cells]
    first = cells[0]
    progress = None if info.runner == CLI_MODULE else \
        session.raw_dir / f"launcher-k{first.k}-{first.shape.name}-c{first.concurrency}.jsonl"
    if progress is not None:
        progress.parent.mkdir(parents=True, exist_ok=True)
        progress.unlink(missing_ok=True)
    argv = bench_argv(info, runs[0]) if progress is None else launcher_argv(info, runs, progress)
    bench_env = {**env, **no_proxy_env(server.record.host)}  # the key never goes to a proxy
    if server.auth:  # vLLM's bench client reads the key from OPENAI_API_KEY (never argv)
        bench_env["OPENAI_API_KEY"] = client_api_key(session.workdir)
    log_path = Path(server.record.log)
    follower = LogFollower(log_path, log_path.stat().st_size if log_path.exists() else 0)
    session.log.section(f"{first.label}: vllm bench serve" + (f" ({len(cells)} categories, one process)"
                                                              if len(cells) > 1 else ""))
    error: BenchRunError | None = None
    try:
        run_bench(argv, bench_env, session.log, ServerProbe(_server_alive(server.record), follower),
                  Watch(stall_timeout_s=float(profile.serve.stall_timeout_s)), session.workdir.root)
    except BenchRunError as exc:
        error = exc
    elapsed = time.monotonic() - t0
    done = read_progress(progress) if progress is not None else {}
    rows, stopped = [], False
    for cell in cells:
        entry = done.get(_result_file(cell))
        measured = entry is not None and entry.get("error") is None if progress is not None else error is None
        metrics, failure, raw = None, None, None
        if measured:
            try:
                metrics = metrics_from_result(read_result(session.raw_dir / _result_file(cell)))
                raw = str(Path("raw") / session.run_id / _result_file(cell))
                failure = judge_metrics(cell, metrics)
            except BenchRunError as exc:
                failure = CellFailure(exc.message, exc.fix)
        when, cell_s = (entry.get("started_at"), float(entry["elapsed_s"])) if entry else (None, 0.0)
        if entry is None and not stopped:  # the cell the process was on when it ended (or a lone cell)
            cell_s = elapsed - sum(float(e["elapsed_s"]) for e in done.values())
        if not measured:
            failure = _failure(entry, error, stopped)
            stopped = stopped or entry is None
        rows.append(build_row(run_id=session.run_id, cell=cell,
                              fingerprint=row_fingerprint(base_fp, cell, session.plan, when or started_at),
                              started_at=when or started_at, elapsed_s=max(cell_s, 0.0), metrics=metrics,
                              failure=failure, raw_result=raw))
    return rows, bool(error and error.server_died)


def _failure(entry: dict[str, Any] | None, error: BenchRunError | None, stopped: bool) -> CellFailure:
    """Why a cell has no result: its run failed (the launcher went on), or the process ended before it finished."""
    known = error.known.failure.id if error is not None and error.known else None
    fix, excerpt = (error.fix, error.excerpt) if error is not None else (None, None)
    if entry is not None:
        return CellFailure(f"vllm bench serve failed: {entry.get('error')}", fix, known, excerpt)
    if error is None:
        return CellFailure("vllm bench serve ended without measuring this cell", fix="see `dsv4setup logs bench`")
    if stopped:
        return CellFailure(f"not measured: the bench stopped in an earlier category ({error.message})", fix, known,
                           excerpt)
    return CellFailure(error.message, fix, known, excerpt)


def _record(session: BenchSession, rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    append_rows(session.results_file, [row])
    rows.append(row)
    session.display.advance(row)
    error = row["error"]
    what = (f"{row['metrics']['output_throughput']:.1f} tok/s" if row["status"] == "ok"
            else f"FAILED: {error['message']}" + (f" [{error['known_failure']}]" if error["known_failure"] else ""))
    session.log.line(f"row k={row['k']} {row['shape']} c={row['concurrency']}"
                     + (f" {row['category']}" if row["category"] else "") + f": {what}")


def run_matrix(session: BenchSession) -> MatrixRun:
    """Every cell of the plan, one server per k; rows are in results.jsonl as soon as they exist."""
    started_at = now_utc()
    info = probe_vllm(session.workdir.venv_python)
    if session.plan.prompts is not None:
        info = info.for_prompt_sets()
    if info.error or not info.version:
        raise StepError(f"no usable vLLM in the serving venv: {info.error or 'vllm is not installed there'}",
                        fix="install it: `dsv4setup up --until vllm`")
    session.log.line(f"vLLM {info.dist} {info.version} (commit {info.commit}); bench runner: {info.runner}")
    state = server_state(session.workdir)
    was_running = state.healthy
    if was_running and state.record is not None and not session.host:
        session.host = state.record.host  # keep the address the server was started with (`serve --host`)
    argv, env = render_for(session, session.profile)
    configured_running = was_running and state.record is not None and \
        state.record.command_fingerprint == command_fingerprint(argv, env)
    order = execution_order(session.plan.ks, session.profile.spec.num_speculative_tokens, configured_running)
    session.tell("probing the hardware for the fingerprint")
    base_fp = setup_fingerprint(session.profile, session.state, session.base_profile, argv, env, info,
                                probe_hardware(session.nvml))
    rows: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    session.display.start(session.plan.size)
    try:
        for k in order:
            _run_k(session, info, k, env, base_fp, rows, servers)
    except BaseException:
        _after_abort(session)
        raise
    return MatrixRun(session.run_id, order, rows, servers, info, started_at, now_utc(), was_running)


def _run_k(session: BenchSession, info: VllmInfo, k: int, env: dict[str, str], base_fp: dict[str, Any],
           rows: list[dict[str, Any]], servers: list[dict[str, Any]]) -> None:
    cells = session.plan.cells(k)
    session.tell(f"k={k}: starting the server")
    up = ensure_server(session, with_k(session.profile, k), f"k={k}")
    if isinstance(up, CellFailure):
        servers.append({"k": k, "ok": False, "known_failure": up.known_failure, "message": up.message})
        for cell in cells:
            _record(session, rows, _unmeasured(session, cell, base_fp, up))
        return
    servers.append({"k": k, "ok": True, "pid": up.record.pid, "reused": up.reused, "ready_s": round(up.ready_s, 1)})
    dead: CellFailure | None = None
    for group in _by_shape_and_concurrency(cells):
        if dead is not None:
            for cell in group:
                _record(session, rows, _unmeasured(session, cell, base_fp, dead))
            continue
        prompts = sum(session.plan.num_prompts(cell) for cell in group)
        session.tell(f"{group[0].label if len(group) == 1 else group[0].label.rsplit(' ', 1)[0]}: vllm bench serve "
                     f"({prompts} prompts" + (f", {len(group)} categories one after another)" if len(group) > 1
                                              else ")"))
        measured, died = _run_cells(session, info, group, up, env, base_fp)
        for row in measured:
            _record(session, rows, row)
        error = next((r["error"] for r in measured if r["status"] != "ok"), None)
        if died and error is not None:
            dead = CellFailure(f"not measured: the server for k={k} died in an earlier cell ({error['message']})",
                               error["fix"], error["known_failure"], error["excerpt"], phase="bench")
    if dead is not None:  # leave nothing half-dead behind for the next k
        record = read_record(session.workdir)
        if record is not None:
            _stop(session, record)


def _by_shape_and_concurrency(cells: list[Cell]) -> list[list[Cell]]:
    """Consecutive cells of one shape and concurrency level: one bench process measures them (its categories)."""
    groups: list[list[Cell]] = []
    for cell in cells:
        if groups and (groups[-1][0].shape, groups[-1][0].concurrency) == (cell.shape, cell.concurrency):
            groups[-1].append(cell)
        else:
            groups.append([cell])
    return groups


def _unmeasured(session: BenchSession, cell: Cell, base_fp: dict[str, Any], why: CellFailure) -> dict[str, Any]:
    now = now_utc()
    fingerprint = row_fingerprint(base_fp, cell, session.plan, now)
    return build_row(run_id=session.run_id, cell=cell, fingerprint=fingerprint, started_at=now, elapsed_s=0.0,
                     failure=why)


def _after_abort(session: BenchSession) -> None:
    """Interrupted or broken: never leave a server at another k than configured running."""
    try:
        argv, env = render_for(session, session.profile)
        record = read_record(session.workdir)
        if record is not None and record.command_fingerprint != command_fingerprint(argv, env) \
                and is_ours(record)[0]:
            stop_server(session.workdir, record)
            session.log.line(f"bench aborted: stopped the server at another k than configured (pid {record.pid})")
    except Exception as exc:  # the original error matters more; say what was left
        session.log.line(f"bench aborted; could not check the server: {exc}")


def _smoke_still_valid(workdir: Workdir, record: ServerRecord) -> bool:
    doc = read_report(report_file(workdir))
    return bool(doc.get("ok")) and (doc.get("server_pid"), doc.get("server_started_at")) == (
        record.pid, record.started_at)


def restore(session: BenchSession, target: Profile, was_running: bool) -> dict[str, Any]:
    """Put the server back: running at the target profile's k (and smoke-tested), or stopped as it was."""
    k = target.spec.num_speculative_tokens
    if not was_running:
        record = read_record(session.workdir)
        if record is not None:
            _stop(session, record)
        return {"ok": True, "server": "stopped", "k": None, "pid": None, "smoke": "not run",
                "message": "no server ran before the bench; none runs now"}
    session.tell(f"restoring the server at k={k}")
    up = ensure_server(session, target, f"restore k={k}")
    if isinstance(up, CellFailure):
        return {"ok": False, "server": "failed", "k": k, "pid": None, "smoke": "not run",
                "message": f"the server could not be restarted at k={k}: {up.message}", "fix": up.fix,
                "known_failure": up.known_failure}
    doc = {"ok": True, "server": "running", "k": k, "pid": up.record.pid, "smoke": "still valid",
           "message": f"the server runs at k={k} again (pid {up.record.pid})"}
    if _smoke_still_valid(session.workdir, up.record):
        return doc
    return {**doc, **_smoke(session, target, k)}


def _smoke(session: BenchSession, target: Profile, k: int) -> dict[str, Any]:
    """The smoke step's own test against the restored server, so `up` finds smoke verified."""
    session.tell(f"smoke-testing the restored server (k={k})")
    with StepLog(session.workdir.log_file("smoke")) as smoke_log:
        smoke_log.section(f"bench {session.run_id}: smoke test of the restored server")
        try:
            smoke_test(session.context(target, smoke_log, "smoke"))
        except StepError as exc:
            return {"ok": False, "smoke": "failed", "message": f"the restored server (k={k}) failed its smoke "
                                                               f"test: {exc.message}", "fix": exc.fix}
    return {"smoke": "passed"}
