"""The terminal observer: the clock ticks on its own; without a terminal, lines at least every heartbeat."""

from __future__ import annotations

import io
import time

from rich.console import Console

from dsv4setup.cli.progress import RichObserver
from dsv4setup.core.state import StepErrorInfo, StepStatus
from tests.core import steps_for_tests as ts


def test_without_a_terminal_a_silent_step_still_prints_a_line_every_heartbeat() -> None:
    sink = io.StringIO()
    observer = RichObserver(Console(file=sink, force_terminal=False, width=200), heartbeat_s=0.5, min_gap_s=10)
    step = ts.steps()[0]
    observer.started(step, 1)
    observer.progress(step, "pip: downloading torch (180.2 MB)")  # within min_gap_s: not printed at once
    time.sleep(1.8)
    observer.finished(step, StepStatus.DONE, "ok")
    lines = [line for line in sink.getvalue().splitlines() if line.strip().startswith("alpha (attempt 1)")]
    assert len(lines) >= 3  # the start line and at least two heartbeats
    assert lines[-1].endswith("pip: downloading torch (180.2 MB)")
    seconds = [int(line.split("[")[1].split("s]")[0]) for line in lines]
    assert seconds == sorted(seconds) and seconds[-1] >= 1  # the clock moved without new messages


def test_on_a_terminal_the_spinner_text_is_recomputed_each_refresh() -> None:
    observer = RichObserver(Console(file=io.StringIO(), force_terminal=True))
    step = ts.steps()[0]
    observer.started(step, 2)
    clock = observer._clocks["alpha"]
    clock.started -= 61  # as if a minute had passed with no new message
    assert "[61s]" in clock.line()
    observer.finished(step, StepStatus.DONE, "ok")


def test_two_running_steps_each_keep_their_line_the_download_with_bytes_rate_and_eta() -> None:
    """Both branches of an `up`: on a terminal one line each under the spinner; the spinner stops only when
    the last running step ends."""
    observer = RichObserver(Console(file=io.StringIO(), force_terminal=True, width=200))
    fetch, build = ts.MarkerStep("download", ()), ts.MarkerStep("vllm", ())
    observer.started(build, 1)
    observer.started(fetch, 1)
    observer.progress(build, "uv: installing 112 packages")
    observer.transfer(fetch, 1_200_000_000, 3_400_000_000, 48_000_000.0)
    assert observer._status is not None
    shown = Console(file=io.StringIO(), width=200, color_system=None)
    with shown.capture() as capture:
        shown.print(observer._status.renderable)  # what the spinner shows now: one line per running step
    lines = [line.strip() for line in capture.get().splitlines()]
    assert lines[0][2:].startswith("vllm (attempt 1) [") and lines[0].endswith("uv: installing 112 packages")
    assert lines[1].startswith("download (attempt 1) [")  # under the first, not beside the spinner
    assert lines[1].endswith("1.2 GB / 3.4 GB (35 %), 48.0 MB/s, ETA 46s")
    observer.finished(build, StepStatus.DONE, "ok")
    assert observer._status is not None and list(observer._clocks) == ["download"]
    observer.finished(fetch, StepStatus.DONE, "ok")
    assert observer._status is None


def test_without_a_terminal_each_running_step_gets_its_own_lines() -> None:
    sink = io.StringIO()
    observer = RichObserver(Console(file=sink, force_terminal=False, width=200), heartbeat_s=0.5, min_gap_s=0)
    fetch, build = ts.MarkerStep("download", ()), ts.MarkerStep("vllm", ())
    observer.started(fetch, 1)
    observer.started(build, 2)
    observer.progress(build, "uv: installing 112 packages")
    observer.progress(fetch, "download: 1.2 GB / 3.4 GB (35 %), 48.0 MB/s, 2/7 files, ETA 46s")
    observer.failed(build, StepErrorInfo(message="uv failed", fix="see the log"), ["line one"])
    observer.finished(fetch, StepStatus.DONE, "ok")
    text = sink.getvalue()
    assert "  vllm (attempt 2) [0s]: uv: installing 112 packages" in text
    assert "download (attempt 1) [0s]: download: 1.2 GB / 3.4 GB (35 %), 48.0 MB/s, 2/7 files, ETA 46s" in text
    assert "✗ vllm failed after 0s: uv failed" in text and "✓ download done in 0s" in text
