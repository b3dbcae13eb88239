"""`dsv4setup next`: the single next action for an agent, from the state and a fresh check.

The fresh check is the engine's own plan: every step's postcondition is verified on the
machine, so drift (a reinstalled vLLM, a stopped server) shows up as the next thing to run.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Literal

from dsv4setup.core.errors import DsvError
from dsv4setup.core.lock import current_holder
from dsv4setup.core.state import State, StepStatus, load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Selection

if TYPE_CHECKING:
    from dsv4setup.profiles.model import Profile

NEXT_SCHEMA = "dsv4setup.next/3"  # /3: `then` (commands after `command`, in order) and `expected_s`
Action = Literal["run", "fix", "wait", "done"]
FOREGROUND_MAX_S = 60  # a run expected to take longer is handed out detached, with its `wait`


@dataclass(frozen=True)
class NextAction:
    action: Action
    command: list[str]
    why: str
    step: str | None = None
    known_failure: str | None = None
    fix: str | None = None
    then: list[list[str]] | None = None  # run after `command`, in order (a detached run: its wait, then next)
    expected_s: int | None = None  # what the run of `command` usually takes (the profile's expected_s)

    def to_doc(self) -> dict[str, object]:
        return {"schema": NEXT_SCHEMA, **asdict(self)}

    def fitted(self, workdir: Workdir, expected_s: int | None) -> NextAction:
        """An `up` command fitted to a short call: detached, with its `wait` and `next`, when the run may take
        over FOREGROUND_MAX_S seconds (or nobody knows how long); else in the foreground as it is."""
        if self.command[:2] != ["dsv4setup", "up"] or "--detach" in self.command:
            return self
        if expected_s is not None and expected_s <= FOREGROUND_MAX_S:
            return replace(self, expected_s=expected_s)
        from dsv4setup.core.detach import wait_command

        detached = [a for a in self.command if a != "--json"] + ["--detach", "--json"]
        return replace(self, command=detached, expected_s=expected_s,
                       then=[wait_command(workdir), ["dsv4setup", "next", "--workdir", str(workdir.root), "--json"]],
                       why=f"{self.why} (expected {_seconds(expected_s)}: it runs detached; repeat the `wait` while "
                           "it exits 12, then ask `next`)")


def _seconds(expected_s: int | None) -> str:
    return f"~{expected_s} s" if expected_s is not None else "an unknown time"


def expected_run_s(profile: Profile | None, steps: list[str],
                   waits: Mapping[str, Sequence[str]] | None = None) -> int | None:
    """The usual seconds of these steps (in runbook order) on this profile's hardware class; None when one is
    not known. With `waits` (what each step waits for in one `up`) as `up` runs them: the longest chain, the
    download beside the installs; without, one after another."""
    if profile is None:
        return None
    known = {step: profile.expected_s.get(step) for step in steps}
    seconds = {step: s for step, s in known.items() if s is not None}
    if len(seconds) < len(known):
        return None
    if waits is None:
        return sum(seconds.values())
    ends: dict[str, int] = {}
    for step in steps:
        ends[step] = seconds[step] + max((ends[w] for w in waits.get(step, ()) if w in ends), default=0)
    return max(ends.values(), default=0)


def _up(workdir: Workdir, profile: str | None = None) -> list[str]:
    chosen = ["--profile", profile] if profile else []
    return ["dsv4setup", "up", "--workdir", str(workdir.root), *chosen, "--yes", "--json"]


def _failed_step(state: State) -> str | None:
    return next((n for n, r in state.steps.items() if r.status == StepStatus.FAILED), None)


def next_action(workdir: Workdir) -> NextAction:
    holder = current_holder(workdir.lock_file)
    if holder is not None:
        from dsv4setup.core.detach import wait_command

        return NextAction("wait", wait_command(workdir),
                          f"another dsv4setup run (pid {holder.get('pid')}, {holder.get('command')}) is working "
                          f"since {holder.get('since')}; check again when it ends")
    try:
        state = load_state(workdir.state_file)
    except DsvError as exc:
        return NextAction("fix", shlex.split(exc.command) if exc.command else
                          ["dsv4setup", "reset", "--workdir", str(workdir.root), "--all"], exc.message, fix=exc.fix)
    if not state.profile:
        return _first_run(workdir)
    failed = _failed_step(state)
    if failed is not None:
        action = _after_failure(workdir, state, failed)
        return action.fitted(workdir, _expected_after_failure(workdir, state, failed))
    return _from_plan(workdir, state)


def _expected_after_failure(workdir: Workdir, state: State, failed: str) -> int | None:
    """What `up` will run again: the failed step and every later step not recorded done."""
    from dsv4setup.profiles.resolve import resolve_profile
    from dsv4setup.runbook import step_names, step_waits

    try:
        profile = resolve_profile(workdir, state.profile, []).profile
    except DsvError:
        return None
    names = step_names(with_bench=False)
    later = names[names.index(failed):] if failed in names else [failed]
    return expected_run_s(profile, [n for n in later if n == failed or state.step(n).status != StepStatus.DONE],
                          step_waits(with_bench=False))


def _after_failure(workdir: Workdir, state: State, failed: str) -> NextAction:
    """The failed step's own fix command when it has one and it is not applied yet, else `up` (which re-runs it)."""
    error = state.steps[failed].error
    if error is None:
        return NextAction("run", _up(workdir), f"step {failed} failed; run it again", step=failed)
    command = error.command
    if command and not _already_set(workdir, command):
        return NextAction("fix", command, f"step {failed} failed: {error.message}; run the command (it applies "
                          "the fix), then `dsv4setup next` again", step=failed, known_failure=error.known_failure,
                          fix=error.fix)
    if command:
        return NextAction("run", _up(workdir), f"step {failed} failed ({error.known_failure or error.message}); "
                          "its fix is in the workdir's dsv4setup.yaml now: run the command", step=failed,
                          known_failure=error.known_failure)
    return NextAction("fix", _up(workdir), f"step {failed} failed: {error.message}; apply the hint, then run the "
                      "command", step=failed, known_failure=error.known_failure, fix=error.fix)


def _literal_fix(workdir: Workdir, exc: DsvError) -> NextAction | None:
    """A profile error whose fix is known to the letter (profiles/fixes.py): its commands, then `next` again."""
    commands: list[list[str]] = getattr(exc, "commands", None) or []
    if not commands:
        return None
    again = ["dsv4setup", "next", "--workdir", str(workdir.root), "--json"]
    return NextAction("fix", commands[0], f"{exc.message}; the commands carry the value over to the key meant",
                      fix=exc.fix, then=[*commands[1:], again])


def _already_set(workdir: Workdir, command: list[str]) -> bool:
    """True when `command` is `dsv4setup profile set K=V...` and the workdir's overrides hold every K=V."""
    if command[1:3] != ["profile", "set"]:
        return False
    from dsv4setup.profiles.overrides import flatten, parse_set, read_workdir_overrides

    overrides = read_workdir_overrides(workdir)
    kept = flatten(overrides.layer.data) if overrides is not None else {}
    items = [a for a in command[3:] if "=" in a and not a.startswith("-")]
    for item in items:
        loc, value = parse_set(item)
        if kept.get(".".join(str(part) for part in loc)) != value:
            return False
    return bool(items)


def _first_run(workdir: Workdir) -> NextAction:
    """Nothing ran yet: `up` with the profile that best matches this machine (or the workdir's choice)."""
    from dsv4setup.preflight.snapshot import take_snapshot
    from dsv4setup.profiles.resolve import resolve_profile

    try:
        resolved = resolve_profile(workdir, None, [], probe=take_snapshot)
    except DsvError as exc:
        return _literal_fix(workdir, exc) or NextAction(
            "fix", ["dsv4setup", "doctor", "--workdir", str(workdir.root), "--json"], exc.message, fix=exc.fix)
    from dsv4setup.runbook import step_names, step_waits

    name = resolved.profile.name
    expected = expected_run_s(resolved.profile, step_names(with_bench=False), step_waits(with_bench=False))
    if resolved.profile.multinode is not None:
        return _first_run_on_a_node(workdir, resolved.profile).fitted(workdir, expected)
    return NextAction("run", _up(workdir, name),
                      f"nothing has run here yet; profile {name} was chosen ({resolved.selected_by}); "
                      "`up` starts with preflight, the same checks as `dsv4setup doctor`",
                      step="preflight").fitted(workdir, expected)


def _first_run_on_a_node(workdir: Workdir, profile: Profile) -> NextAction:
    """A multi-node profile: `up` names this machine's node, found by its address, or asks which it is."""
    from dsv4setup.cluster.nodes import find_node

    try:
        node = find_node(profile, None)
    except DsvError as exc:
        return NextAction("fix", _up(workdir, profile.name), exc.message, fix=exc.fix)
    return NextAction("run", [*_up(workdir, profile.name), "--node", node.name],
                      f"nothing has run here yet; profile {profile.name} is multi-node and this machine is its "
                      f"node {node.name} ({node.role}, {node.address}); run the same on every node", step="preflight")


def _retry(kind: str, version: str | None) -> str:
    return f"dsv4setup upgrade --vllm {version}" if kind == "upgrade" else "dsv4setup rollback"


def _from_plan(workdir: Workdir, state: State) -> NextAction:
    from dsv4setup.runbook import RunbookRequest, build_runbook

    try:
        runbook, _ = build_runbook(RunbookRequest(workdir, state.profile))
        decisions = runbook.plan(Selection())
    except DsvError as exc:
        return _literal_fix(workdir, exc) or NextAction("fix", _up(workdir), exc.message, fix=exc.fix)
    pending = next((d for d in decisions if d.action == "run"), None)
    cluster = state.steps.get("cluster")
    node = (cluster.outputs.get("node") if cluster else None) or {}
    if pending is not None:
        why = f"{pending.step}: {pending.reason}"
        if pending.step == "cluster" and node.get("role") == "worker":
            why += f"; this joins node {node.get('name')} to the head's Ray cluster (start the head first)"
        expected = expected_run_s(runbook.profile, [d.step for d in decisions if d.action == "run"], runbook.waits)
        return NextAction("run", _up(workdir), why, step=pending.step).fitted(workdir, expected)
    if node.get("role") == "worker":
        return NextAction("wait", ["dsv4setup", "status", "--workdir", str(workdir.root), "--json"],
                          f"node {node.get('name')} is a worker and has joined the Ray cluster at "
                          f"{cluster.outputs.get('ray_address') if cluster else '?'}; the head serves: wait for the "
                          "head's `dsv4setup up --node ...` (its status shows every node)", step="cluster")
    upgrade = state.upgrade
    if upgrade is not None and upgrade.phase == "failed":  # the old generation serves again: done, with why
        return NextAction("done", ["dsv4setup", "generations", "--workdir", str(workdir.root), "--json"],
                          f"the last {upgrade.kind} ({upgrade.from_generation} -> {upgrade.to_generation}) failed: "
                          f"{upgrade.error}; {upgrade.from_generation} (vLLM {upgrade.from_version}) serves again and "
                          "every step is verified", fix=f"read {upgrade.log or 'its log'}, correct the cause, then run "
                          f"`{_retry(upgrade.kind, upgrade.to_version)}` again")
    return NextAction("done", ["dsv4setup", "smoke", "--workdir", str(workdir.root), "--json"],
                      f"every step of {state.profile} is done and verified; the server is up "
                      "(re-run the smoke test any time with the command)")
