"""Text for people: the live progress of `up` (a spinner per step), and the plan and status tables."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table
from rich.text import Text

from dsv4setup.cli.output import Document
from dsv4setup.core.decision import Decision
from dsv4setup.core.state import StepErrorInfo, StepStatus
from dsv4setup.engine import Observer, Step

STATUS_STYLE = {"done": "green", "skipped": "cyan", "failed": "bold red", "running": "yellow",
                "interrupted": "magenta", "pending": "dim", "stale": "dim yellow", "drifted": "bold yellow"}


class _Clock:
    """A running step's line, rendered afresh at each refresh: the elapsed seconds tick on their own."""

    def __init__(self, step: str, attempt: int) -> None:
        self.step, self.attempt, self.started, self.message = step, attempt, time.monotonic(), ""
        self.transfer: tuple[int, int, float] | None = None  # bytes done, total, B/s (a download)
        self.printed = 0.0

    def line(self) -> str:
        text = f"{self.step} (attempt {self.attempt}) [{time.monotonic() - self.started:.0f}s]"
        detail = self.message
        if self.transfer is not None and "ETA" not in detail:  # the download's own messages carry all this
            bytes_text = transfer_text(*self.transfer)
            detail = f"{detail} ({bytes_text})" if detail else bytes_text
        return f"{text}: {detail}" if detail else text

    def __rich__(self) -> Text:
        return Text(self.line())


def transfer_text(done: int, total: int, rate: float) -> str:
    """'1.2 GB / 3.4 GB (35 %), 48.0 MB/s, ETA 46s'."""
    share = f" ({100 * done // total} %)" if total else ""
    eta = f", ETA {(total - done) / rate:.0f}s" if rate > 0 and total >= done else ""
    return f"{_size(done)} / {_size(total)}{share}, {_size(int(rate))}/s{eta}"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


class _Board:
    """Every running step's line, one under the other (both branches of an `up` run at once)."""

    def __init__(self, clocks: dict[str, _Clock]) -> None:
        self.clocks = clocks

    def __rich__(self) -> Text:
        return Text("\n").join(Text(clock.line()) for clock in list(self.clocks.values()))


class RichObserver(Observer):
    """A spinner over one line per running step, each with a clock that ticks every second and the
    step's latest progress message (the download: bytes, rate and ETA).

    Without a terminal (a log file, a pipe, `up --detach`), plain lines instead: each step's new
    message (at most one per `min_gap_s` per step) and a heartbeat per running step at least every
    `heartbeat_s`. Thread-safe: the engine calls it from each running step's thread.
    """

    def __init__(self, console: Console, heartbeat_s: float = 30.0, min_gap_s: float = 5.0) -> None:
        self.console = console
        self.heartbeat_s, self.min_gap_s = heartbeat_s, min_gap_s
        self._status: Status | None = None
        self._clocks: dict[str, _Clock] = {}
        self._lock = threading.RLock()
        self._heart_stop: threading.Event | None = None

    def decided(self, decision: Decision) -> None:
        if decision.action == "skip":
            self.console.print(f"[cyan]✓ {decision.step}[/] [dim]{decision.reason}[/]", highlight=False)
        elif decision.action == "run":
            self.console.print(f"[bold]→ {decision.step}[/]: {decision.description} [dim]({decision.reason})[/]",
                               highlight=False)

    def started(self, step: Step, attempt: int) -> None:
        with self._lock:
            clock = self._clocks[step.name] = _Clock(step.name, attempt)
            if self.console.is_terminal:
                if self._status is None:
                    self._status = self.console.status(_Board(self._clocks), refresh_per_second=4)
                    self._status.start()
                return
            self._say(clock, force=True)
            if self._heart_stop is None:
                self._heart_stop = threading.Event()
                threading.Thread(target=self._heartbeat, args=(self._heart_stop,), name="dsv4setup-heartbeat",
                                 daemon=True).start()

    def progress(self, step: Step, message: str) -> None:
        with self._lock:
            clock = self._clocks.get(step.name)
            if clock is None:
                return
            clock.message = message
            if self._status is None:
                self._say(clock, force=False)

    def transfer(self, step: Step, done: int, total: int, rate: float) -> None:
        with self._lock:
            clock = self._clocks.get(step.name)
            if clock is not None:
                clock.transfer = (done, total, rate)

    def _say(self, clock: _Clock, force: bool) -> None:
        with self._lock:
            now = time.monotonic()
            if not (force or now - clock.printed >= self.min_gap_s):
                return
            clock.printed = now
            self.console.print(Text("  " + clock.line()))

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(min(1.0, self.heartbeat_s / 4)):
            with self._lock:
                for clock in list(self._clocks.values()):
                    if time.monotonic() - clock.printed >= self.heartbeat_s:
                        self._say(clock, force=True)

    def _stop(self, step: Step) -> float:
        with self._lock:
            clock = self._clocks.pop(step.name, None)
            if not self._clocks:
                if self._heart_stop is not None:
                    self._heart_stop.set()
                    self._heart_stop = None
                if self._status is not None:
                    self._status.stop()
                    self._status = None
            return time.monotonic() - clock.started if clock is not None else 0.0

    def finished(self, step: Step, status: StepStatus, detail: str) -> None:
        elapsed = self._stop(step)
        self.console.print(f"[green]✓ {step.name}[/] {status.value} in {elapsed:.0f}s [dim]{detail}[/]",
                           highlight=False)

    def failed(self, step: Step, error: StepErrorInfo, log_tail: list[str]) -> None:
        elapsed = self._stop(step)
        with self._lock:  # the failure's lines together, not interleaved with the other branch's
            self.console.print(f"[bold red]✗ {step.name}[/] failed after {elapsed:.0f}s: {error.message}",
                               highlight=False)
            if log_tail:
                self.console.print(f"[dim]last lines of {error.log}:[/]")
                for line in log_tail[-15:]:
                    self.console.print(Text("  " + line, style="dim"))
            if error.fix:
                self.console.print(f"[bold]fix:[/] {error.fix}", highlight=False)


def decisions_table(decisions: list[Decision], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("step", "action", "why", "what"):
        table.add_column(col)
    style = {"run": "bold yellow", "skip": "cyan", "not-selected": "dim"}
    for d in decisions:
        table.add_row(d.step, f"[{style[d.action]}]{d.action}[/]", d.reason, d.description)
    return table


def profile_note(doc: Document) -> str | None:
    """The line every human output adds for the CPU demo or a derived profile (keys of Profile.marks())."""
    if doc.get("demo"):
        return f"[bold yellow]demo:[/] {doc.get('notice') or 'the CPU runbook demo, not DeepSeek-V4-Flash'}"
    if doc.get("derived"):
        return "[yellow]derived profile:[/] made by dsv4setup for these GPUs from their family's shipped profile; " \
               "not verified"
    return None


def status_table(doc: Document, header: str) -> Table:
    table = Table(title=f"{header}  profile: {doc.get('profile') or '-'}", title_justify="left",
                  caption=profile_note(doc), caption_justify="left")
    for col in ("step", "status", "attempts", "finished", "detail"):
        table.add_column(col)
    for row in doc["steps"]:
        err = row["error"] or {}
        table.add_row(row["step"], f"[{STATUS_STYLE.get(row['status'], '')}]{row['status']}[/]",
                      str(row["attempts"]), row["finished_at"] or "-", _progress_text(row["progress"])
                      or err.get("message") or escape(row.get("drift") or ""))
    return table


def print_verification(console: Console, doc: Document) -> None:
    """Under the status table: what was checked, the server's probe, and what to run when something drifted."""
    checked = doc.get("verification") or {}
    if not checked.get("checked"):
        console.print(f"not checked on the machine: {checked.get('skipped_because')}", markup=False, highlight=False)
    server = doc.get("server")
    if server is not None:
        auth = f", auth required (key in {server['key_file']})" if server["auth"] else ""
        console.print(f"server {server['base_url']}: {server['detail']}{auth}", markup=False, highlight=False)
    if checked.get("drifted"):
        console.print(f"[bold yellow]drifted[/]: {', '.join(checked['drifted'])} no longer hold on this machine; "
                      f"`dsv4setup next --workdir {doc['workdir']}` says what to run", highlight=False)


def cluster_table(cluster: Document) -> Table:
    """Every node of a multi-node profile: `status` on the head shows them all, on a worker its join state."""
    ray = cluster["ray"]
    joined = "[green]joined[/]" if cluster["joined"] else "[red]not joined[/]"
    state = "runs" if ray["running"] else "[red]not running[/]"
    ray_text = f"Ray pid {ray['pid']} {state}" if ray["pid"] else "no Ray"
    checked = f"last check {cluster['checked_at'] or '-'}: {cluster['outcome']}"
    table = Table(title=f"cluster {cluster['ray_address']}: node {cluster['node']} ({cluster['role']}) {joined}, "
                        f"{ray_text}; {checked}", title_justify="left",
                  caption=escape(cluster["message"] or "") + ("" if cluster["live"] == "answered" else
                                                        f"\nalive now: Ray {cluster['live']}"),
                  caption_justify="left")
    for col in ("node", "role", "address", "interface", "alive"):
        table.add_column(col)
    table.add_column("fingerprint", overflow="fold")
    for node in cluster["nodes"]:
        alive = node["alive"] if node["alive"] is not None else node["alive_at_check"]
        when = "" if node["alive"] is not None else " (at check)" if alive is not None else ""
        alive_text = "-" if alive is None else ("[green]yes[/]" if alive else "[red]no[/]") + when
        fp = node["fingerprint"]
        agree = {None: "", True: "[green]matches the head[/]: ", False: "[red]differs[/]: "}[node["agrees"]]
        detail = "; ".join(node["differences"]) if node["differences"] else (
            f"{fp['vllm']}, {len(fp['patches'])} patches, {fp['checkpoint_files']} checkpoint files" if fp else "-")
        table.add_row(node["name"] or "-", node["role"] or "-", node["address"] or "-", node["interface"] or "-",
                      alive_text, agree + escape(detail))
    return table


def _progress_text(progress: dict[str, Any] | None) -> str:
    """'412s (usually ~540s): pip: downloading torch ...' for a running step."""
    if not progress:
        return ""
    usual = f" (usually ~{progress['expected_s']}s)" if progress.get("expected_s") else ""
    return f"{progress.get('elapsed_s') or 0:.0f}s{usual}: {progress['phase']}"


def print_serve_plan(console: Console, doc: Document) -> None:
    note = profile_note(doc)
    if note:
        console.print(note, highlight=False)
    serve = doc.get("serve") or {}
    console.print("[bold]serve command[/] (exec'd as argv, without a shell; quoted here for copying):")
    console.print("  " + serve.get("command", " ".join(serve.get("argv", []))), markup=False, highlight=False)
    if doc.get("auth"):
        console.print(f"auth: {doc['auth']['text']}", markup=False, highlight=False)
    if serve.get("env"):
        console.print("[bold]environment[/]:")
        for key, value in serve["env"].items():
            console.print(f"  {key}={value}", markup=False, highlight=False)
    if doc.get("overridden"):
        console.print("[bold]changed from the profile[/]:")
        for key, origin in doc["overridden"].items():
            console.print(f"  {key} <- {origin}", markup=False, highlight=False)
    for node in doc.get("nodes") or []:
        console.print(f"[bold]node {node['name']}[/] ({node['role']}):")
        for cmd in sorted(node["commands"], key=lambda c: c.get("order", 0)):
            console.print(f"  {cmd.get('order', '')}. {cmd.get('purpose', '')}", markup=False, highlight=False)
            console.print("     " + cmd.get("command", " ".join(cmd["argv"])), markup=False, highlight=False)
