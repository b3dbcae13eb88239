"""Result rows (`dsv4setup.bench-row/3`): one per (k, shape, concurrency) cell, appended to results.jsonl.

A row is "ok" with vLLM's figures, or "failed" with what went wrong, the known failure it
matched (known_failures.yaml id) and the excerpt that matched. Both carry the fingerprint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4setup.bench import ROW_SCHEMA, ROW_SCHEMA_V1, ROW_SCHEMA_V2
from dsv4setup.bench.matrix import Cell
from dsv4setup.core.errors import UsageError
from dsv4setup.core.secrets import redact_json

# vLLM result key -> row metric key (vLLM's own names, plus units where vLLM's name has none)
COPIED = {
    "output_throughput": "output_throughput", "total_token_throughput": "total_token_throughput",
    "request_throughput": "request_throughput", "mean_tpot_ms": "mean_tpot_ms", "median_tpot_ms": "median_tpot_ms",
    "p99_tpot_ms": "p99_tpot_ms", "mean_ttft_ms": "mean_ttft_ms", "median_ttft_ms": "median_ttft_ms",
    "p99_ttft_ms": "p99_ttft_ms", "mean_itl_ms": "mean_itl_ms", "p99_itl_ms": "p99_itl_ms",
    "mean_e2el_ms": "mean_e2el_ms", "completed": "completed", "failed": "failed_requests",
    "total_output_tokens": "total_output_tokens", "duration": "duration_s",
    "spec_decode_acceptance_length": "acceptance_length", "spec_decode_num_drafts": "drafts",
    "spec_decode_draft_tokens": "draft_tokens", "spec_decode_accepted_tokens": "accepted_tokens",
}
SPEC_KEYS = ("acceptance_rate", "acceptance_length", "per_position_acceptance", "drafts", "draft_tokens",
             "accepted_tokens")


@dataclass(frozen=True)
class CellFailure:
    message: str
    fix: str | None = None
    known_failure: str | None = None
    excerpt: str | None = None
    phase: str = "bench"  # serve: the server for this k did not start; bench: the measurement failed

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "fix": self.fix, "known_failure": self.known_failure,
                "excerpt": self.excerpt, "phase": self.phase}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def metrics_from_result(result: dict[str, Any]) -> dict[str, Any]:
    """The row's metrics from vLLM's saved JSON; spec-decode figures are null when vLLM reported none.

    vLLM gives the acceptance rate in percent; the row keeps a fraction (0..1), like per-position rates.
    """
    metrics: dict[str, Any] = {key: None for key in (*COPIED.values(), *SPEC_KEYS)}
    for source, key in COPIED.items():
        metrics[key] = _number(result.get(source))
    rate = _number(result.get("spec_decode_acceptance_rate"))
    metrics["acceptance_rate"] = round(rate / 100, 6) if rate is not None else None
    per_pos = result.get("spec_decode_per_position_acceptance_rates")
    metrics["per_position_acceptance"] = [round(float(v), 6) for v in per_pos] if isinstance(per_pos, list) else None
    for key in ("completed", "failed_requests", "total_output_tokens", "drafts", "draft_tokens", "accepted_tokens"):
        if metrics[key] is not None:
            metrics[key] = int(metrics[key])
    return metrics


def judge_metrics(cell: Cell, metrics: dict[str, Any]) -> CellFailure | None:
    """A run that finished but cannot stand as a result: failed requests, or k > 0 without drafts."""
    completed, failed = metrics.get("completed") or 0, metrics.get("failed_requests") or 0
    if completed == 0 or failed:
        return CellFailure(f"{failed} of {completed + failed} requests failed in vllm bench serve",
                           fix="the errors are in the bench log (`dsv4setup logs bench`) and the server's "
                                "(`dsv4setup logs serve`)")
    if metrics.get("output_throughput") is None:
        return CellFailure("vllm bench serve saved no output_throughput",
                           fix="this vLLM's result format differs; see the raw result file")
    if cell.k > 0 and not metrics.get("drafts"):
        return CellFailure(f"k={cell.k} but vLLM reported no speculative drafts: the speculative config did not "
                           "take effect", fix="look for 'SpeculativeConfig' and the MTP layer in `dsv4setup logs "
                                               "serve`; `dsv4setup checkpoint lint CHECKPOINT_DIR` counts the "
                                               "mtp.* keys")
    return None


def build_row(*, run_id: str, cell: Cell, fingerprint: dict[str, Any], started_at: str, elapsed_s: float,
              metrics: dict[str, Any] | None = None, failure: CellFailure | None = None,
              raw_result: str | None = None) -> dict[str, Any]:
    """One result row; failed when `failure` is given (metrics, if any, are kept for the record)."""
    return {"schema": ROW_SCHEMA, "run_id": run_id, "k": cell.k, "shape": cell.shape.name,
            "concurrency": cell.concurrency, "category": cell.category, "status": "failed" if failure else "ok",
            "metrics": metrics,
            "error": failure.to_dict() if failure else None, "raw_result": raw_result, "started_at": started_at,
            "elapsed_s": round(elapsed_s, 2), "fingerprint": fingerprint}


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows as JSON lines, flushed to disk (a crash later never loses a measured cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(redact_json(row, sort_keys=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def upgrade_row(row: Any) -> Any:
    """An older row as a bench-row/3 row; the measurements are kept and nothing is guessed.

    bench-row/1 (first release): `error.hint` is `error.fix`, and the per-patch list of every diff hash
    (bug #20) is read as its single hash, or null when it held several (which one ran is unknown).
    bench-row/2: random prompts only, so `workload.dataset_sha256` and `category` are null (as for random rows now).
    """
    if isinstance(row, dict) and row.get("schema") == ROW_SCHEMA_V1:
        row = _upgrade_v1(row)
    if not isinstance(row, dict) or row.get("schema") != ROW_SCHEMA_V2:
        return row
    fingerprint = row.get("fingerprint")
    if isinstance(fingerprint, dict) and isinstance(fingerprint.get("workload"), dict):
        workload = {**fingerprint["workload"], "dataset_sha256": None}
        row = {**row, "fingerprint": {**fingerprint, "workload": workload}}
    return {**row, "schema": ROW_SCHEMA, "category": None}


def _upgrade_v1(row: dict[str, Any]) -> dict[str, Any]:
    error = row.get("error")
    if isinstance(error, dict):
        error = {("fix" if key == "hint" else key): value for key, value in error.items()}
    upgraded = {**row, "schema": ROW_SCHEMA_V2, "error": error}
    patches = (row.get("fingerprint") or {}).get("patches")
    if isinstance(patches, dict) and isinstance(patches.get("diff_sha256"), dict):
        diffs = {pid: (v[0] if len(v) == 1 else None) if isinstance(v, list) else v
                 for pid, v in patches["diff_sha256"].items()}
        upgraded["fingerprint"] = {**row["fingerprint"], "patches": {**patches, "diff_sha256": diffs}}
    return upgraded


def read_rows(path: Path, *, validate: bool = True) -> list[dict[str, Any]]:
    """The rows of a results.jsonl; a line that is not a valid row is a usage error naming file:line."""
    from dsv4setup.core.jsonschemas import validate_document

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", fix="bench results live in <workdir>/bench/results.jsonl") from None
    except OSError as exc:
        raise UsageError(f"{path} cannot be read: {exc.strerror}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = upgrade_row(json.loads(line))
            if not isinstance(row, dict) or row.get("schema") != ROW_SCHEMA:
                raise ValueError(f"not a {ROW_SCHEMA} row")
            if validate:
                validate_document(row)
        except Exception as exc:  # noqa: BLE001 - JSON, schema and shape errors read the same to the user
            reason = getattr(exc, "message", None) or str(exc)
            raise UsageError(f"{path}:{number}: not a bench result row: {reason[:300]}",
                             fix="pass a results.jsonl written by `dsv4setup bench`") from None
        rows.append(row)
    return rows
