"""Server-level operations for the CLI and the steps: is it up, stop it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dsv4setup.cluster.raynode import stop_ray
from dsv4setup.core.errors import DsvError
from dsv4setup.core.lock import workdir_lock
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.process import ServerRecord, StopReport, is_ours, read_record, stop_server
from dsv4setup.serve.readiness import base_url, health_status

SERVE_SCHEMA = "dsv4setup.serve/2"
DOWN_SCHEMA = "dsv4setup.down/2"
DEFAULT_GRACE_S = 15.0


@dataclass(frozen=True)
class ServerState:
    record: ServerRecord | None
    ours: bool
    detail: str
    health: int | None

    @property
    def healthy(self) -> bool:
        return self.ours and self.health == 200


def server_state(workdir: Workdir) -> ServerState:
    """What runs for this workdir: the record, whether its pid is our server, its /health status."""
    record = read_record(workdir)
    if record is None:
        return ServerState(None, False, f"no server recorded ({workdir.run_dir / 'serve.json'})", None)
    ours, detail = is_ours(record)
    health = health_status(record.host, record.port) if ours else None
    if ours:
        detail += f", /health {health if health is not None else 'does not answer'}"
    return ServerState(record, ours, detail, health)


def serve_doc(workdir: Workdir, state: ServerState, ok: bool, error: dict[str, Any] | None = None) -> dict[str, Any]:
    rec = state.record
    return {"schema": SERVE_SCHEMA, "ok": ok, "workdir": str(workdir.root), "running": state.ours,
            "healthy": state.healthy, "pid": rec.pid if rec and state.ours else None,
            "host": rec.host if rec else None, "port": rec.port if rec else None,
            "base_url": base_url(rec.host, rec.port) if rec else None, "log": rec.log if rec else None,
            "started_at": rec.started_at if rec else None, "detail": state.detail, "error": error}


def down(workdir: Workdir, grace_s: float = DEFAULT_GRACE_S) -> dict[str, Any]:
    """Stop this workdir's server, then this node's Ray (multi-node), and clean up. Nothing running is a no-op.

    Holds the workdir lock: a `down` never stops the server under a running `up` or bench
    (LockHeldError, exit 3, names that run's pid)."""
    with workdir_lock(workdir.lock_file, "down"):
        return _down(workdir, grace_s)


def _down(workdir: Workdir, grace_s: float) -> dict[str, Any]:
    record = read_record(workdir)
    messages, reports = [], []
    if record is not None:
        report = _stopped(stop_server(workdir, record, grace_s), "the server")
        reports.append(report)
        messages.append(f"stopped the server (pid {record.pid}, port {record.port}) in {report.elapsed_s:.1f}s"
                        + (" (SIGKILL was needed)" if report.forced else "")
                        if report.was_running else "the recorded server was not running; cleaned up its records")
    ray = stop_ray(workdir, grace_s)
    if ray is not None:
        reports.append(_stopped(ray, "this node's Ray"))
        messages.append(f"stopped this node's Ray (pids {ray.pids})" if ray.was_running
                        else "this node's recorded Ray was not running; cleaned up its records")
    refused = [x for r in reports for x in r.refused]
    if refused:
        messages.append(f"left alone {len(refused)} leftover(s) the records name but that are not provably ours: "
                        + "; ".join(f"{x.path} ({x.reason})" for x in refused))
    return {"schema": DOWN_SCHEMA, "ok": True, "workdir": str(workdir.root),
            "was_running": any(r.was_running for r in reports),
            "message": "; ".join(messages) or "no server is running for this workdir",
            "pids": sorted(p for r in reports for p in r.pids), "forced": any(r.forced for r in reports),
            "elapsed_s": round(sum(r.elapsed_s for r in reports), 2),
            "removed": [x for r in reports for x in r.removed],
            "refused": [{"path": x.path, "reason": x.reason} for x in refused]}


def _stopped(report: StopReport, what: str) -> StopReport:
    if report.survivors:
        raise DsvError(f"processes {report.survivors} of {what} would not stop, even with SIGKILL",
                       fix="they are probably stuck in the kernel (D state, e.g. a hung GPU driver); "
                            "check `ps -o pid,stat,cmd -p " + ",".join(map(str, report.survivors)) + "`")
    return report
