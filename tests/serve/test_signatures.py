"""The known-failure table: every signature matches its own example, nothing matches a healthy startup."""

from __future__ import annotations

import pytest

from dsv4setup.serve.readiness import PHASES, phase_of
from dsv4setup.serve.signatures import known_failures, match_failure

from .conftest import FIXTURES

FAILURES = known_failures()


def test_table_has_the_field_notes_and_generic_entries() -> None:
    ids = {f.id for f in FAILURES}
    assert {"custom-allreduce-invalid-argument", "shm-broadcast-hang", "deepgemm-next-n", "mtp-prefix-missing",
            "compressed-tensors-target-mismatch", "mtp-weights-missing", "out-of-memory", "port-in-use",
            "weights-missing", "unknown-argument"} <= ids
    assert all(f.finding.summary and f.finding.fix and f.finding.status == "fail" and f.example for f in FAILURES)


@pytest.mark.parametrize("failure", FAILURES, ids=lambda f: f.id)
def test_each_example_is_recognised_as_its_own_failure(failure) -> None:
    text = "\n".join([failure.example] * failure.min_count)
    match = match_failure(text, FAILURES)
    assert match is not None and match.failure.id == failure.id, f"{failure.id} example taken by {match}"
    assert match.excerpt


def test_a_warning_that_also_shows_in_slow_startups_needs_repeats() -> None:
    line = next(f.example for f in FAILURES if f.id == "shm-broadcast-hang")
    assert match_failure(line + "\n" + line, FAILURES) is None
    assert match_failure("\n".join([line] * 3), FAILURES).failure.id == "shm-broadcast-hang"


def test_a_real_healthy_vllm_cpu_startup_and_shutdown_matches_nothing() -> None:
    log = (FIXTURES / "vllm_cpu_startup.log").read_text(encoding="utf-8")
    assert match_failure(log, FAILURES) is None


def test_multi_line_signature_spans_lines() -> None:
    text = "RuntimeError: Triton Error [CUDA]: an illegal memory access was encountered\n" \
           "  File 'x.py', line 3, in _dequantize_and_gather_k_kernel\n"
    assert match_failure(text, FAILURES).failure.id == "sparse-mla-head-block"


def test_phases_of_a_real_startup_end_with_startup_complete() -> None:
    lines = (FIXTURES / "vllm_cpu_startup.log").read_text(encoding="utf-8").splitlines()
    seen: list[str] = []
    phase = "starting"
    for line in lines:
        phase = phase_of([line], phase)
        if not seen or seen[-1] != phase:
            seen.append(phase)
    assert seen == ["starting", "resolving the model config", "starting the engine", "loading weights",
                    "loading the MTP drafter", "loading weights", "allocating the KV cache", "starting the API server",
                    "application startup complete"]  # eager: "disabling torch.compile" is not compiling
    assert {name for name, _ in PHASES} >= set(seen[1:])
