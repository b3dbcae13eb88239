"""The terminal observer: the clock ticks on its own; without a terminal, lines at least every heartbeat."""

from __future__ import annotations

import io
import time

from rich.console import Console

from dsv4setup.cli.progress import RichObserver
from dsv4setup.core.state import StepStatus
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
    clock = observer._clock
    assert clock is not None
    clock.started -= 61  # as if a minute had passed with no new message
    assert "[61s]" in clock.line()
    observer.finished(step, StepStatus.DONE, "ok")
