"""Byte progress for many concurrent file transfers: totals, rate, ETA, throttled messages."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from dsv4setup.download.disk import human

RATE_WINDOW_S = 10.0
Measure = Callable[[int, int, float], None]  # bytes done, bytes total, bytes per second


class Cancelled(Exception):
    """Raised inside a transfer when the download is being stopped (Ctrl-C or another worker failed)."""


class ByteProgress:
    """Thread-safe counter that reports '12.3 GB / 150.0 GB (8 %), 85.2 MB/s, 3/46 files, ETA 27 min'."""

    def __init__(self, total: int, files: int, report: Callable[[str], None], *, done: int = 0,
                 every_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 measure: Measure = lambda _done, _total, _rate: None) -> None:
        self.total, self.files = total, files
        self.done = done
        self.transferred = 0
        self.files_done = 0
        self.cancel = threading.Event()
        self._report, self._every, self._clock, self._measure = report, every_s, clock, measure
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, int]] = deque([(clock(), 0)])
        self._last_report = 0.0

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def add(self, n: int) -> None:
        self.check_cancel()
        with self._lock:
            self.done += n
            self.transferred += n
            now = self._clock()
            self._samples.append((now, self.transferred))
            while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
                self._samples.popleft()
            due = now - self._last_report >= self._every
            if due:
                self._last_report = now
        if due:
            self._emit()

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1
        self._emit()

    def _emit(self) -> None:
        self._measure(self.done, self.total, self.rate())
        self._report(self.message())

    def rate(self) -> float:
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def message(self) -> str:
        rate = self.rate()
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = (f"{human(self.done)} / {human(self.total)} ({pct:.0f} %), {human(rate)}/s, "
                f"{self.files_done}/{self.files} files")
        if rate > 0 and self.total > self.done:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
