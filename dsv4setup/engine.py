"""The runbook engine: ordered steps, fingerprints, verified postconditions, resume.

A step is skipped only when its last run finished, its input fingerprint is unchanged and
its postcondition still holds on the machine. Decisions are taken just before each step
runs, once the steps it `needs` have ended, so a step re-run earlier in the same `up` (say,
vLLM reinstalled) makes the next step's postcondition fail (patches gone) and that step runs
again.

`up` runs what the `needs` allow at the same time (`_Schedule`): a step starts, in a thread of
its own, as soon as every step it needs (or comes `after`) has ended well, so the download runs beside the
toolkit → vllm → patches branch. The steps share one in-memory `State` and change it only under
its lock. After a failure no new step starts; the steps already running finish, then `up`
returns the failure. `sequential=True` is the one-after-another engine: each step decided and
run in order, in the calling thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shlex
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dsv4setup.core.decision import Decision
from dsv4setup.core.errors import DsvError, StepError, UsageError
from dsv4setup.core.finding import Finding
from dsv4setup.core.lock import workdir_lock
from dsv4setup.core.outputs import StepOutputs
from dsv4setup.core.proc import ATTEMPT_MARK, StepLog, attempt_tail, stop_left_child
from dsv4setup.core.state import (
    OutputsT,
    State,
    StepErrorInfo,
    StepProgress,
    StepRecord,
    StepStatus,
    load_state,
    now_iso,
    save_state,
)
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.model import Profile


@dataclass
class RunContext:
    """What a step sees: the workdir, the resolved profile, options, earlier steps' outputs."""

    workdir: Workdir
    profile: Profile
    state: State
    options: dict[str, Any] = field(default_factory=dict)
    log: StepLog | None = None
    progress: Callable[[str], None] = lambda _msg: None
    transfer: Callable[[int, int, float], None] = lambda _done, _total, _rate: None  # bytes done, total, B/s
    cancelled: threading.Event = field(default_factory=threading.Event)  # set when `up` is interrupted

    def outputs(self, model: type[OutputsT]) -> OutputsT | None:
        """An earlier step's outputs, read by attribute (None: not run, or not applicable)."""
        return self.state.outputs(model)

    def require_log(self) -> StepLog:
        if self.log is None:
            raise RuntimeError("step log is only open while a step runs")
        return self.log


class Step(ABC):
    """One checked, resumable step: inputs -> fingerprint, is_done that verifies, run."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # steps whose outcome it uses: done first, in this `up` or before it
    after: ClassVar[tuple[str, ...]] = ()  # steps it waits for when one `up` runs both, needing nothing of them
    proves: ClassVar[tuple[str, ...]] = ()  # steps whose outcome this step proves: when one runs, so does this
    Outputs: ClassVar[type[StepOutputs]]  # what run returns; validated before it is saved

    def not_applicable(self, ctx: RunContext) -> str | None:
        """A reason this step has nothing to do for this profile (recorded as skipped)."""
        return None

    @abstractmethod
    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        """The inputs whose change must re-run the step (profile section, versions, paths)."""

    @abstractmethod
    def is_done(self, ctx: RunContext) -> Finding:
        """Verify the postcondition on the machine itself, not in the state file."""

    @abstractmethod
    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Do the work; return outputs (as declared by `Outputs`) for later steps; raise StepError with a fix."""


INPUTS_CHANGED = "inputs-changed"  # verify_done's finding id when a done step's inputs differ from its record


def _seconds_since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _timed_check(state: State, record: StepRecord, start: float) -> None:
    """Keep what checking the postcondition cost (`status --json` shows it per step)."""
    with state.lock:
        record.verify_s, record.verified_at = _seconds_since(start), now_iso()


def _record(state: State, name: str) -> StepRecord:
    """A step's record, read without adding one (a concurrent save may be dumping the dict of records)."""
    return state.steps.get(name) or StepRecord()


class Interrupted(DsvError):
    """Raised into a still-running step's progress report once `up` was interrupted: it stops there."""


def fingerprint(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Selection:
    """Which steps `up` touches: --from/--until/--only, and --redo to force some."""

    start: str | None = None
    until: str | None = None
    only: tuple[str, ...] = ()
    redo: tuple[str, ...] = ()

    def selected(self, names: Sequence[str]) -> list[str]:
        for flag, value in (("--from", self.start), ("--until", self.until), *(
                ("--only", o) for o in self.only), *(("--redo", r) for r in self.redo)):
            if value is not None and value not in names:
                raise UsageError(f"{flag} {value}: no such step", fix=f"steps are: {', '.join(names)}")
        if self.only:
            return [n for n in names if n in self.only]
        lo = names.index(self.start) if self.start else 0
        hi = names.index(self.until) if self.until else len(names) - 1
        if lo > hi:
            raise UsageError(f"--from {self.start} comes after --until {self.until}")
        return list(names[lo:hi + 1])


class Observer:
    """Hooks for the UI. The engine knows nothing of terminals. Called from the thread that runs the
    step: two steps running at the same time call them concurrently."""

    def decided(self, decision: Decision) -> None: ...
    def started(self, step: Step, attempt: int) -> None: ...
    def progress(self, step: Step, message: str) -> None: ...
    def transfer(self, step: Step, done: int, total: int, rate: float) -> None: ...  # bytes done, total, B/s
    def finished(self, step: Step, status: StepStatus, detail: str) -> None: ...
    def failed(self, step: Step, error: StepErrorInfo, log_tail: list[str]) -> None: ...


@dataclass
class UpResult:
    ok: bool
    decisions: list[Decision]
    failed_step: str | None = None
    error: StepErrorInfo | None = None
    log_tail: list[str] = field(default_factory=list)


class ProgressRecorder:
    """Keeps the running step's live progress in the state file, at most every `every_s` seconds.

    `status --json` in another process reads it: phase, bytes and rate of a transfer, and the
    step's expected duration, so a slow step can be told from a stuck one. Thread-safe (the
    download reports from its worker threads, the other branch's step from its own): the state's
    lock guards the change and the save.
    """

    def __init__(self, path: Path, state: State, record: StepProgress, every_s: float = 2.0) -> None:
        self.path, self.state, self.record, self.every_s = path, state, record, every_s
        self._last = 0.0

    def phase(self, message: str) -> None:
        with self.state.lock:
            self.record.phase = message
            self._save(force=False)

    def transfer(self, done: int, total: int, rate: float) -> None:
        with self.state.lock:
            self.record.bytes_done, self.record.bytes_total, self.record.rate_bps = done, total, round(rate, 1)
            self._save(force=False)

    def _save(self, force: bool) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            self.record.updated_at = now_iso()
            save_state(self.path, self.state)


class Runbook:
    def __init__(self, steps: Sequence[Step], workdir: Workdir, profile: Profile,
                 options: dict[str, Any] | None = None) -> None:
        self.steps = list(steps)
        self.by_name = {s.name: s for s in self.steps}
        self.workdir = workdir
        self.profile = profile
        self.options = dict(options or {})
        for index, step in enumerate(self.steps):  # the list is a topological order: no step waits on a later one
            later = [n for n in (*step.needs, *step.after) if n in self.by_name and self.names.index(n) >= index]
            if later:
                raise UsageError(f"step {step.name} needs {', '.join(later)}, listed after it in the runbook",
                                 fix="list every step after the steps it needs")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def needs(self) -> dict[str, tuple[str, ...]]:
        return {s.name: tuple(s.needs) for s in self.steps}

    @property
    def waits(self) -> dict[str, tuple[str, ...]]:
        """What each step waits for in one `up`: its needs and the steps it comes after."""
        return {s.name: (*s.needs, *s.after) for s in self.steps}

    def context(self, state: State) -> RunContext:
        return RunContext(self.workdir, self.profile, state, self.options)

    def decide(self, step: Step, state: State, selection: Selection) -> Decision:
        """Will this step run, and why. Calls is_done: the machine, not the state file, is the truth."""
        if step.name not in selection.selected(self.names):
            return Decision(step.name, "not-selected", "outside --from/--until/--only", step.description)
        ctx = self.context(state)
        record = _record(state, step.name)
        if step.name in selection.redo:
            return Decision(step.name, "run", "forced by --redo", step.description)
        reason = step.not_applicable(ctx)
        if reason is not None:
            if record.status == StepStatus.SKIPPED:
                return Decision(step.name, "skip", f"not applicable: {reason}", step.description)
            return Decision(step.name, "run", f"to record: not applicable ({reason})", step.description)
        if record.is_interrupted():
            return Decision(step.name, "run", "interrupted last time (its process is gone)", step.description)
        if record.status == StepStatus.RUNNING:
            return Decision(step.name, "run", "left running by an earlier run", step.description)
        if record.status != StepStatus.DONE:
            why = {"pending": self._never_recorded(step), "failed": "failed last time"}.get(
                record.status.value, record.status.value)
            return Decision(step.name, "run", why, step.description)
        post = self.verify_done(step, state)
        if post.id == INPUTS_CHANGED:
            return Decision(step.name, "run", post.summary, step.description)
        if not post.ok:
            return Decision(step.name, "run", f"drift: {post.summary}", step.description)
        return Decision(step.name, "skip", f"done, verified: {post.summary}", step.description)

    def verify_done(self, step: Step, state: State) -> Finding:
        """A done step's proof, as checked before every skip: its inputs unchanged (else a failed finding
        `INPUTS_CHANGED` naming them), then its postcondition on the machine. `status` shows the same."""
        ctx = self.context(state)
        record = _record(state, step.name)
        started = time.perf_counter()
        inputs = step.inputs(ctx)
        if fingerprint(inputs) != record.fingerprint:
            changed = sorted(k for k in set(inputs) | set(record.fingerprint_inputs)
                             if json.dumps(inputs.get(k), sort_keys=True, default=str)
                             != json.dumps(record.fingerprint_inputs.get(k), sort_keys=True, default=str))
            return Finding(INPUTS_CHANGED, "fail", f"inputs changed: {', '.join(changed) or 'fingerprint'}")
        post = step.is_done(ctx)
        _timed_check(state, record, started)
        return post

    def _never_recorded(self, step: Step) -> str:
        """A pending step whose log exists ran before its record was reset: its outputs may still be there."""
        if self.workdir.log_file(step.name).exists():
            return "no record (reset?); its outputs may still be on disk: verify, then run if needed"
        return "not run yet"

    def check_needs(self, state: State, selection: Selection) -> None:
        chosen = selection.selected(self.names)
        for name in chosen:
            for need in self.by_name[name].needs:
                if need in chosen or need not in self.by_name:
                    continue
                if _record(state, need).status not in (StepStatus.DONE, StepStatus.SKIPPED):
                    raise UsageError(f"step {name} needs step {need}, which is not done",
                                     fix="run the earlier steps first, or widen --from/--only",
                                     command=f"dsv4setup up --until {need}")

    def plan(self, selection: Selection) -> list[Decision]:
        """What `up` would do now (dry run). Reads state; never writes."""
        state = load_state(self.workdir.state_file)
        self.check_needs(state, selection)
        decisions: list[Decision] = []
        for step in self.steps:
            decision = self.decide(step, state, selection)
            voided = [d.step for d in decisions if d.action == "run" and d.step in step.proves]
            if decision.action == "skip" and voided and step.not_applicable(self.context(state)) is None:
                decision = Decision(step.name, "run", f"after {', '.join(voided)} runs: its proof is for what "
                                    f"{', '.join(voided)} leaves behind", step.description)
            decisions.append(decision)
        return decisions

    def up(self, selection: Selection, observer: Observer | None = None, sequential: bool = False) -> UpResult:
        """Run the selected steps: independent branches at the same time, or (`sequential`) one after another."""
        obs = observer or Observer()
        self.workdir.ensure()
        with workdir_lock(self.workdir.lock_file, "up"):
            state = load_state(self.workdir.state_file)
            self.check_needs(state, selection)
            state.profile = self.profile.name
            result = _Schedule(self, state, selection, obs, sequential).run()
            if result.ok:
                save_state(self.workdir.state_file, state)  # each check's cost (verify_s), also when nothing ran
            return result

    def _run_step(self, step: Step, state: State, obs: Observer,
                  cancelled: threading.Event | None = None) -> tuple[StepErrorInfo | None, list[str]]:
        ctx = self.context(state)
        if cancelled is not None:
            ctx.cancelled = cancelled
        log_path = self.workdir.log_file(step.name)
        with state.lock:
            record = state.step(step.name)
            record.status = StepStatus.RUNNING
            record.attempts += 1
            record.pid = os.getpid()
            record.started_at, record.finished_at, record.error = now_iso(), None, None
            record.progress = StepProgress(expected_s=self.profile.expected_s.get(step.name))
            record.run_s = None
            save_state(self.workdir.state_file, state)
        started = time.perf_counter()
        recorder = ProgressRecorder(self.workdir.state_file, state, record.progress)
        obs.started(step, record.attempts)
        with StepLog(log_path) as log:
            log.section(f"{step.name}: {ATTEMPT_MARK} {record.attempts} (pid {os.getpid()})")
            for pid in stop_left_child(log_path):  # a killed attempt's installer, still writing where this one will
                log.line(f"-- stopped pid {pid}, left running by an earlier attempt that was killed")
            ctx.log = log

            def progress(msg: str) -> None:
                _stop_if(ctx.cancelled)
                log.line(f"-- {msg}")
                recorder.phase(msg)
                obs.progress(step, msg)

            def transfer(done: int, total: int, rate: float) -> None:
                _stop_if(ctx.cancelled)
                recorder.transfer(done, total, rate)
                obs.transfer(step, done, total, rate)

            ctx.progress, ctx.transfer = progress, transfer
            try:
                skipped = step.not_applicable(ctx)
                if skipped is not None:
                    outputs, status, detail = {"not_applicable": skipped}, StepStatus.SKIPPED, skipped
                else:
                    inputs = step.inputs(ctx)
                    outputs = step.Outputs.model_validate(step.run(ctx)).model_dump(mode="json", exclude_unset=True)
                    checked = time.perf_counter()
                    post = step.is_done(ctx)
                    _timed_check(state, record, checked)
                    if not post.ok:
                        raise StepError(f"{step.name} ran but its postcondition fails: {post.summary}",
                                        fix=f"see {log_path}")
                    record.fingerprint, record.fingerprint_inputs = fingerprint(inputs), inputs
                    status, detail = StepStatus.DONE, post.summary
            except DsvError as exc:
                log.line(f"FAILED: {exc.message}" + (f"\nfix: {exc.fix}" if exc.fix else ""))
                record.run_s = _seconds_since(started)
                known = getattr(exc, "known_failure", None)
                return self._fail(step, state, StepErrorInfo(
                    message=exc.message, fix=exc.fix, log=str(log_path), known_failure=known,
                    command=self._in_workdir(shlex.split(exc.command) if exc.command else None)), obs)
            except KeyboardInterrupt:
                log.line("INTERRUPTED by the user")
                record.run_s = _seconds_since(started)
                self._fail(step, state, StepErrorInfo(message="interrupted by the user", log=str(log_path),
                                                      fix="run `dsv4setup up` again to resume"), obs)
                raise
            except Exception as exc:  # a bug: record it, keep the traceback in the log, never lose state
                log.write(traceback.format_exc())
                record.run_s = _seconds_since(started)
                return self._fail(step, state, StepErrorInfo(
                    message=f"internal error in step {step.name}: {type(exc).__name__}: {exc}",
                    fix=f"the traceback is in {log_path}; please report it", log=str(log_path)), obs)
            log.line(f"{status.value.upper()}: {detail}")
        with state.lock:
            if ctx.cancelled.is_set():  # `up` was interrupted meanwhile and recorded this step so: keep that
                return StepErrorInfo(message="interrupted by the user", log=str(log_path)), []
            record.status, record.outputs, record.progress = status, outputs, None
            record.pid, record.finished_at, record.run_s = None, now_iso(), _seconds_since(started)
            save_state(self.workdir.state_file, state)
        obs.finished(step, status, detail)
        return None, []

    def _in_workdir(self, command: list[str] | None) -> list[str] | None:
        """A fix command as the user runs it: for this workdir (steps name the fix, the engine knows where)."""
        if not command or "--workdir" in command:
            return command
        return [*command, "--workdir", str(self.workdir.root)]

    def _fail(self, step: Step, state: State, error: StepErrorInfo,
              obs: Observer) -> tuple[StepErrorInfo, list[str]]:
        with state.lock:
            record = state.step(step.name)
            record.status, record.error, record.progress = StepStatus.FAILED, error, None
            record.pid, record.finished_at = None, now_iso()
            save_state(self.workdir.state_file, state)
        tail = attempt_tail(self.workdir.log_file(step.name))
        obs.failed(step, error, tail)
        return error, tail


def _stop_if(cancelled: threading.Event) -> None:
    if cancelled.is_set():
        raise Interrupted("interrupted by the user", fix="run `dsv4setup up` again to resume")


Outcome = tuple[str, StepErrorInfo | None, list[str]]  # a step's name, its error (None: it ended well), log tail


class _Schedule:
    """One `up`'s order of work. A step is decided once every step it needs or comes after has ended well
    (skipped, not selected, or run to done); `sequential`: once every step before it has. A step to run gets a
    thread of its own (sequential: the caller's). After the first failure nothing new starts; the
    steps running finish their current work, then the first failure is the result."""

    def __init__(self, runbook: Runbook, state: State, selection: Selection, obs: Observer,
                 sequential: bool) -> None:
        self.runbook, self.state, self.selection, self.obs = runbook, state, selection, obs
        self.sequential = sequential
        self.waiting = list(runbook.steps)
        self.ended: set[str] = set()
        self.running: set[str] = set()
        self.started: dict[str, int] = {}  # each step started by this `up`: its attempts before it
        self.decisions: list[Decision] = []
        self.failure: Outcome | None = None
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self.raised: list[BaseException] = []  # what a step's thread raised past its record (a full disk)
        self.cancelled = threading.Event()

    def run(self) -> UpResult:
        try:
            self._start_ready()
            while self.running:
                self._ended(self.outcomes.get())
                self._start_ready()
        except KeyboardInterrupt:
            self._interrupted()
            raise
        except BaseException:  # a decision that raised (a damaged record): the running steps end first
            while self.running:
                self._ended(self.outcomes.get())
            raise
        if self.raised:  # as the sequential engine does: out of `up`, once the other steps have ended
            raise self.raised[0]
        order = self.runbook.names
        decisions = sorted(self.decisions, key=lambda d: order.index(d.step))
        if self.failure is not None:
            name, error, tail = self.failure
            return UpResult(False, decisions, name, error, tail)
        return UpResult(True, decisions)

    def _ready(self, step: Step) -> bool:
        names = self.runbook.names
        before = names[:names.index(step.name)] if self.sequential else [
            n for n in (*step.needs, *step.after) if n in self.runbook.by_name]
        return all(n in self.ended for n in before)

    def _failed(self) -> bool:
        """A step of this `up` failed: its outcome, or already its record (a failure is recorded before its
        thread reports it, and no step may start once it is on record)."""
        with self.state.lock:
            return self.failure is not None or any(
                _record(self.state, n).status == StepStatus.FAILED and _record(self.state, n).attempts > before
                for n, before in self.started.items())

    def _start_ready(self) -> None:
        """Decide, in runbook order, every step whose needs have ended; start those that run."""
        progressed = True
        while progressed and not self._failed():
            progressed = False
            for step in [s for s in self.waiting if self._ready(s)]:
                if self._failed():
                    return
                self.waiting.remove(step)
                progressed = True
                decision = self.runbook.decide(step, self.state, self.selection)
                self.decisions.append(decision)
                self.obs.decided(decision)
                if decision.action != "run":
                    self.ended.add(step.name)
                    continue
                self.running.add(step.name)
                self.started[step.name] = _record(self.state, step.name).attempts
                if self.sequential:
                    self._ended((step.name, *self.runbook._run_step(step, self.state, self.obs)))
                else:
                    threading.Thread(target=self._run_in_thread, args=(step,), name=f"dsv4setup-{step.name}",
                                     daemon=True).start()

    def _run_in_thread(self, step: Step) -> None:
        try:
            outcome: Outcome = (step.name, *self.runbook._run_step(step, self.state, self.obs, self.cancelled))
        except BaseException as exc:  # noqa: BLE001 (the record could not be written: the scheduler raises it)
            self.raised.append(exc)
            outcome = (step.name, StepErrorInfo(message=f"step {step.name}: {type(exc).__name__}: {exc}"), [])
        self.outcomes.put(outcome)  # whatever happened, the scheduler hears of it (it waits for every step)

    def _ended(self, outcome: Outcome) -> None:
        name, error, _ = outcome
        self.running.discard(name)
        if error is None:
            self.ended.add(name)
        elif self.failure is None:
            self.failure = outcome

    def _interrupted(self) -> None:
        """Ctrl-C: record every step still running in a thread as interrupted by the user, and stop them at
        their next progress report (their subprocesses had the SIGINT too)."""
        with self.state.lock:
            self.cancelled.set()
            for name in sorted(self.running):
                record = self.state.step(name)
                if record.status == StepStatus.RUNNING:
                    record.status, record.progress, record.pid, record.finished_at = (
                        StepStatus.FAILED, None, None, now_iso())
                    record.error = StepErrorInfo(message="interrupted by the user", log=str(
                        self.runbook.workdir.log_file(name)), fix="run `dsv4setup up` again to resume")
            save_state(self.runbook.workdir.state_file, self.state)
