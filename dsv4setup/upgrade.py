"""`upgrade`, `rollback`, `generations`: move the serving venv to another vLLM without losing a working server.

upgrade: (1) resolve the new plan and say what changes (vLLM version, generation, patches per the
manifest, serve flags); (2) build the new generation beside the current one while the server keeps
serving: the vllm and patches steps run against `venvs/<version>-<hash>/` with a build state of their
own (`Workdir.building`), and verify statically (dist-info, freeze file, RECORD, patch probes: no
import of torch, no CUDA, no GPU memory); (3) switch: the new generation's step records go into the
state, the `current` pointer flips, and the runbook runs (serve replaces the server, smoke is the
gate; `--bench` adds the bench step); (4) any failure there switches back the same way (old records,
old pointer, `up`: the old server serves and is smoked again) and the upgrade exits 1 with what failed
and its log.

With a `--user` systemd unit installed (whose ExecStart names a generation's interpreter) the switch goes
through systemctl: the unit stops the server, the unit is installed again for the new generation by the
very code of `service install --user` (checks, file, daemon-reload, restart), the serve step finds it
running that command and smoke is the gate; switching back installs it for the old generation the same
way. A `--system` unit only root can change: refused before anything is built, with root's commands.

Kill -9 at any point: the journal in the state file (`State.upgrade`) says the phase. Killed while
building, the old generation is still current and serving; killed while switching, the next `up`
restores the generation it came from (`recover`; an installed `--user` unit is installed again for it
where its command differs), and its runbook starts and smokes it. The new
version is written to the workdir's overrides only once smoke passed, and before the journal says
`done`, so the next `up` never reverts it nor runs a version no generation holds.

Multi-node: every node builds and switches its own generation with the same `upgrade` (workers first,
the head last, as with `up`); the head's cluster step refuses a node whose vLLM or patches differ
and names the command that node still needs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from dsv4setup.core.errors import DsvError, UsageError
from dsv4setup.core.generations import (
    Generation,
    Marker,
    Pointer,
    SmokeMark,
    UpgradeJournal,
    current_name,
    generation_name,
    generation_path,
    list_generations,
    ownership_refusal,
    read_marker,
    read_pointer,
    recovery,
    to_remove,
    write_marker,
    write_pointer,
)
from dsv4setup.core.lock import held_across, workdir_lock
from dsv4setup.core.proc import attempt_tail, stop_left_child
from dsv4setup.core.state import (
    State,
    StepErrorInfo,
    StepRecord,
    StepStatus,
    load_state,
    now_iso,
    save_state,
)
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Observer, Runbook, Selection, UpResult, fingerprint
from dsv4setup.profiles.model import Profile
from dsv4setup.profiles.resolve import ResolvedProfile
from dsv4setup.runbook import RunbookRequest, build_runbook, load_step

if TYPE_CHECKING:
    from dsv4setup.service.systemd import InstalledUnit

UPGRADE_SCHEMA = "dsv4setup.upgrade/1"
GENERATIONS_SCHEMA = "dsv4setup.generations/1"
BUILT_STEPS = ("vllm", "patches")  # what a generation holds: the steps built beside the current one


@dataclass
class SwitchRequest:
    workdir: Workdir
    profile: str | None = None
    sets: list[str] = field(default_factory=list)
    vllm: str | None = None  # upgrade: the version to move to; rollback: None
    bench: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _vllm_inputs_fingerprint(runbook: Runbook) -> str:
    step = runbook.by_name["vllm"]
    return fingerprint(step.inputs(runbook.context(load_state(runbook.workdir.state_file))))


def _flag_items(argv: list[str]) -> list[str]:
    """The serve command's options as `--flag value` items (the interpreter path left out: it names the venv)."""
    items: list[str] = []
    for token in argv[2:]:
        if token.startswith("--") or not items:
            items.append(token)
        else:
            items[-1] += f" {token}"
    return items


def flag_changes(old_argv: list[str], new_argv: list[str]) -> dict[str, list[str]]:
    """Serve options only in the old command (`removed`) and only in the new one (`added`). Pure."""
    old, new = _flag_items(old_argv), _flag_items(new_argv)
    return {"removed": [i for i in old if i not in new], "added": [i for i in new if i not in old]}


def patch_changes(profile_patches: list[str], old_version: str | None, new_version: str) -> list[dict[str, Any]]:
    """Per patch of the new profile, what the manifest ships for the old and the new version: a diff (its file),
    `upstream` (a kind whose fix is in the releases), or null (no variant: the build refuses unless the probe
    finds the fix upstream)."""
    from dsv4setup.patches.manifest import load_manifest

    manifest = load_manifest()

    def shipped(patch_id: str, version: str | None) -> str | None:
        if version is None or patch_id not in manifest.by_id:
            return None
        patch = manifest.get(patch_id)
        if not patch.is_diff:
            return "upstream"
        found = patch.variant_for(version)
        return found[1].path.name if found else None

    return [{"id": p, "old": shipped(p, old_version), "new": shipped(p, new_version)} for p in profile_patches]


def _serve_argv(resolved: ResolvedProfile, workdir: Workdir, state: State) -> list[str]:
    from dsv4setup.serve.command import render_serve

    return list(render_serve(resolved.profile, workdir, state).argv)


def _records(state: State) -> dict[str, dict[str, Any]]:
    return {name: state.steps[name].model_dump(mode="json") for name in BUILT_STEPS if name in state.steps}


def _restore_records(state: State, records: dict[str, dict[str, Any]]) -> None:
    for name in BUILT_STEPS:
        if name in records:
            state.steps[name] = StepRecord.model_validate(records[name])
        else:
            state.steps.pop(name, None)


def _profile_value(resolved: ResolvedProfile, key: str) -> Any:
    """The profile's own value of `vllm.KEY` (its file, else the model's default): what a kept override that
    the generation being switched to did not have gives way to."""
    import yaml

    from dsv4setup.profiles.model import VllmSpec

    source = resolved.source_file
    try:
        doc = yaml.safe_load(source.read_text(encoding="utf-8")) if isinstance(source, Path) else None
    except (OSError, yaml.YAMLError):
        doc = None
    section = (doc or {}).get("vllm") if isinstance(doc, dict) else None
    if isinstance(section, dict) and key in section:
        return section[key]
    field = VllmSpec.model_fields.get(key)
    return field.default if field is not None else None


def _vllm_keys(sets: list[str]) -> dict[str, Any]:
    """The `vllm.*` items of `--set` (they make the generation, so they are kept with it), typed."""
    from dsv4setup.profiles.overrides import parse_set

    found: dict[str, Any] = {}
    for item in sets:
        path, value = parse_set(item)
        if path[0] == "vllm" and len(path) == 2:
            found[str(path[1])] = value
    return found


def _record_vllm_section(workdir: Workdir, name: str, section: dict[str, Any]) -> None:
    path = generation_path(workdir.root, name)
    marker = read_marker(path)
    if marker is not None:
        marker.vllm_overrides = section
        write_marker(path, marker)


def _adopt(workdir: Workdir, name: str, state: State, section: dict[str, Any]) -> Marker:
    """The current generation's marker with the records that built it (the legacy `venv/` gets its first one)."""
    path = generation_path(workdir.root, name)
    vllm = state.steps["vllm"]
    version = (vllm.fingerprint_inputs.get("vllm") or {}).get("version") or vllm.outputs.get("version")
    marker = read_marker(path) or Marker(name=name, vllm_version=version,
                                         package=vllm.outputs.get("package"),
                                         created_at=vllm.finished_at or now_iso(), uid=os.getuid(), complete=True)
    marker.inputs_fingerprint = marker.inputs_fingerprint or vllm.fingerprint
    if marker.vllm_overrides is None:  # what the workdir keeps now, and the version it was built for (an `up
        marker.vllm_overrides = {**section, "version": version}  # --set vllm.version=V` keeps none)
    patches = state.steps.get("patches")
    if patches is not None and patches.status == StepStatus.DONE:
        marker.patches = {k: list(patches.outputs.get(k) or []) for k in ("applied", "upstream")}
    marker.records = _records(state)
    write_marker(path, marker)
    return marker


def _journal(state: State, **changes: Any) -> UpgradeJournal:
    assert state.upgrade is not None
    state.upgrade = state.upgrade.model_copy(update={**changes, "updated_at": now_iso()})
    return state.upgrade


def vllm_section(workdir: Workdir) -> dict[str, Any]:
    """The workdir's kept `vllm:` overrides (dsv4setup.yaml), e.g. {"version": "0.32.0"}."""
    from dsv4setup.profiles.overrides import read_workdir_overrides

    overrides = read_workdir_overrides(workdir)
    section = overrides.layer.data.get("vllm") if overrides is not None else None
    return dict(section) if isinstance(section, dict) else {}


def vllm_sets(section: dict[str, Any]) -> list[str]:
    """A `vllm:` section as `--set` items (a string as it is, as `--set` reads a string field; else JSON, which
    is YAML). Pure."""
    return [f"vllm.{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in section.items()]


def _keep_vllm_section(workdir: Workdir, section: dict[str, Any]) -> None:
    """Make the workdir's kept `vllm:` overrides exactly `section` (the generation that serves sticks)."""
    from dsv4setup.preflight.snapshot import take_snapshot
    from dsv4setup.profiles.overrides import write_override
    from dsv4setup.profiles.resolve import persist_unset

    for key, value in section.items():
        write_override(workdir, f"vllm.{key}", value)
    gone = [f"vllm.{key}" for key in vllm_section(workdir) if key not in section]
    if gone:
        persist_unset(workdir, None, gone, probe=take_snapshot)


def recover(workdir: Workdir) -> str | None:
    """Finish what a killed upgrade or rollback left (see the module's doc); a sentence for the user, or None."""
    if not workdir.state_file.exists():
        return None
    state = load_state(workdir.state_file)
    journal = state.upgrade
    action = recovery(journal, journal is not None and _pid_alive(journal.pid))
    if journal is None or action in ("none", "wait"):
        return None
    with held_across(workdir.lock_file, "up (finishing an interrupted upgrade)"):
        if action == "roll-back" and journal.from_generation is not None:
            source = read_marker(generation_path(workdir.root, journal.from_generation))
            if source is not None and source.records:
                _restore_records(state, source.records)
                write_pointer(workdir.root, Pointer(journal.from_generation, journal.from_previous))
                _keep_vllm_section(workdir, journal.from_vllm)
        _journal(state, phase="interrupted",
                 error=f"the {journal.kind} was killed while {journal.phase}; {journal.from_generation} is current")
        save_state(workdir.state_file, state)
        if action == "roll-back":  # the unit may still run (or be written for) the generation switched to
            restored = state.steps.get("vllm")
            _point_unit_at_current(workdir, (restored.fingerprint_inputs.get("vllm") or {}).get("version")
                                   if restored is not None else None)
    return (f"an interrupted {journal.kind} ({journal.phase}, pid {journal.pid}) was closed: generation "
            f"{journal.from_generation if action == 'roll-back' else current_name(workdir.root)} is current; "
            "this run starts and smokes it")


def _build(request: SwitchRequest, new: Runbook, name: str, observer: Observer) -> tuple[UpResult, State]:
    """The vllm and patches steps into `venvs/<name>`, with a build state of their own seeded from the main one
    (and, for a generation built before, its own records: the engine verifies it and skips what still holds)."""
    wd = request.workdir
    target = generation_path(wd.root, name)
    if target.exists():
        refusal = ownership_refusal(wd.root, target, os.getuid())
        if refusal is not None:
            raise DsvError(f"{target} exists and is not provably a generation of ours ({refusal}); nothing was "
                           "changed", fix=f"move {target} away yourself, then run the same command again")
    target.parent.mkdir(parents=True, exist_ok=True)
    earlier = read_marker(target) if target.exists() else None
    if earlier is not None and not earlier.complete:
        # a build killed before: a kill -9 leaves its installer running, writing there by path; stop it, then
        # rename the folder out of the way at once and remove it
        stop_left_child(wd.log_file("vllm"))
        aside = target.with_name(f".removing-{target.name}-{os.getpid()}")
        target.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
        earlier = None
    building = Workdir(wd.root, wd.chosen_by, building=target)
    seed = load_state(wd.state_file)
    seed.upgrade = None
    for step in BUILT_STEPS:
        seed.steps.pop(step, None)
    if earlier is not None:  # built before (then rolled back): verified, not rebuilt
        _restore_records(seed, earlier.records)
    save_state(building.state_file, seed)
    runbook = Runbook([load_step(s) for s in BUILT_STEPS], building, new.profile, new.options)
    result = runbook.up(Selection(only=BUILT_STEPS), observer)
    return result, load_state(building.state_file)


def _run(runbook: Runbook, observer: Observer) -> UpResult:
    return runbook.up(Selection(), observer)


def _switch_to(wd: Workdir, state: State, records: dict[str, dict[str, Any]], pointer: Pointer) -> None:
    """Make `pointer.current` current: its step records into the state, then the pointer (each write atomic;
    a kill between them is what the journal's `switching` phase and `recover` are for)."""
    _restore_records(state, records)
    save_state(wd.state_file, state)
    write_pointer(wd.root, pointer)


def _failure(result: UpResult) -> dict[str, Any]:
    return {"step": result.failed_step, "message": result.error.message if result.error else None,
            "log": result.error.log if result.error else None, "log_tail": result.log_tail}


def _mark_smoke(wd: Workdir, name: str, ok: bool) -> None:
    path = generation_path(wd.root, name)
    marker = read_marker(path)
    if marker is not None:
        marker.last_smoke = SmokeMark(at=now_iso(), ok=ok)
        write_marker(path, marker)


def _current_runbook(request: SwitchRequest, record: StepRecord) -> tuple[Runbook, ResolvedProfile]:
    """The runbook of what serves now: the workdir's profile at the vLLM version the current generation was
    built for (an `up --set vllm.version=V` leaves no override behind); refused when the current generation
    was built from other vllm settings, since switching back would then rebuild instead of restart."""
    version = (record.fingerprint_inputs.get("vllm") or {}).get("version")
    sets = [f"vllm.version={version}"] if version else []
    runbook, resolved = build_runbook(RunbookRequest(request.workdir, request.profile, sets, False, request.options))
    if _vllm_inputs_fingerprint(runbook) != record.fingerprint:
        raise UsageError("the current generation was built from other vllm settings than the workdir's now, so it "
                         "could not be switched back to", fix="run `dsv4setup up` first (it brings the current "
                         "generation in line), then the same command again",
                         command=f"dsv4setup up --workdir {request.workdir.root} --yes")
    return runbook, resolved


def system_unit_refusal(unit: str, workdir: Path, kind: str, root_commands: list[str]) -> UsageError:
    """A `--system` unit runs the current generation's interpreter and only root can rewrite it: the refusal,
    before anything is built, with the root commands as `service` prints them (pure)."""
    shown = "\n".join(["run as root:", *(f"  {c}" for c in root_commands)])
    return UsageError(f"the server runs as the system unit {unit}, whose command names the current generation's "
                      f"interpreter, and only root can change it: the {kind} stopped before building anything",
                      fix=f"{shown}\nthen `dsv4setup service remove --workdir {workdir}`, the same {kind}, and "
                          "`dsv4setup service install --system` with the root commands it prints",
                      reference="upgrade-system-unit")


def _unit_to_switch(workdir: Workdir, kind: str) -> InstalledUnit | None:
    """The installed `--user` unit the switch goes through (None: no unit), its manager reachable now (else
    DsvError before anything is built); a `--system` one is refused."""
    from dsv4setup.service.manage import root_commands_to_remove
    from dsv4setup.service.systemd import read_installed, require_user_manager

    unit = read_installed(workdir)
    if unit is not None and unit.scope == "system":
        raise system_unit_refusal(unit.name, workdir.root, kind, root_commands_to_remove(unit, workdir))
    if unit is not None:
        require_user_manager()
    return unit


def _unit_failure(workdir: Workdir, step: str, exc: DsvError) -> UpResult:
    """A systemctl action that failed, as the engine reports a failed step (the server's log and its tail)."""
    log = workdir.log_file("serve")
    return UpResult(ok=False, decisions=[], failed_step=step,
                    error=StepErrorInfo(message=exc.message, fix=exc.fix, log=str(log)), log_tail=attempt_tail(log))


def _serve_through(unit: InstalledUnit | None, wd: Workdir, profile: Profile, runbook: Runbook,
                   observer: Observer) -> UpResult:
    """The runbook on the generation now current; with a unit, first point it there (the very `service install
    --user`: checks, unit file, daemon-reload, restart), so the serve step starts it through systemctl and smoke
    is the gate."""
    if unit is not None:
        from dsv4setup.service.manage import install_profile

        try:
            install_profile(wd, profile, "user")
        except DsvError as exc:
            return _unit_failure(wd, "serve", exc)
    return _run(runbook, observer)


def _stop_unit(wd: Workdir, unit: InstalledUnit | None) -> UpResult | None:
    """Stop the server through its unit before the switch (a failure: the switch back starts it again)."""
    if unit is None:
        return None
    from dsv4setup.service.systemd import systemctl

    try:
        systemctl(unit, "stop", unit.name, timeout_s=180)
    except DsvError as exc:
        return _unit_failure(wd, "serve", exc)
    return None


def _point_unit_at_current(workdir: Workdir, version: str | None) -> None:
    """After a roll-back of a killed switch: the installed `--user` unit runs the now-current generation
    (re-installed, and so started, only where its command differs from that generation's)."""
    from dsv4setup.serve.process import command_fingerprint
    from dsv4setup.service.manage import install_command, served_command
    from dsv4setup.service.systemd import read_installed

    unit = read_installed(workdir)
    if unit is None or unit.scope != "user":
        return
    from dsv4setup.preflight.snapshot import take_snapshot
    from dsv4setup.profiles.resolve import resolve_profile

    sets = [f"vllm.version={version}"] if version else []
    profile = resolve_profile(workdir, None, sets, probe=take_snapshot).profile
    served = served_command(workdir, profile, "user")
    if unit.command_fingerprint != command_fingerprint(served.argv, served.env):
        install_command(workdir, "user", served)


def switch(request: SwitchRequest, observer: Observer | None = None,
           say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """`upgrade` (request.vllm set) or `rollback`: the `dsv4setup.upgrade/1` document. See the module's doc."""
    obs = observer or Observer()
    wd = request.workdir.ensure()
    kind = "upgrade" if request.vllm is not None else "rollback"
    with held_across(wd.lock_file, kind):
        recover(wd)
        unit = _unit_to_switch(wd, kind)
        state = load_state(wd.state_file)
        record = state.steps.get("vllm")
        if record is None or record.status != StepStatus.DONE:
            raise UsageError(f"nothing to {kind} from: the vllm step of {wd.root} is not done",
                             fix="run `dsv4setup up` first", command=f"dsv4setup up --workdir {wd.root}")
        from_name = current_name(wd.root)
        assert from_name is not None
        before = read_pointer(wd.root) or Pointer(from_name)
        from_vllm = vllm_section(wd)
        from_marker = _adopt(wd, from_name, state, from_vllm)
        if request.vllm is not None:
            kept = {**from_vllm, **_vllm_keys(request.sets), "version": request.vllm}
        else:
            target = before.previous
            marker = read_marker(generation_path(wd.root, target)) if target else None
            if target is None or marker is None or not marker.complete or not marker.records:
                raise UsageError("no previous generation to roll back to" + (f" ({target} is not complete or "
                                 "not ours)" if target else ""), fix="`dsv4setup generations` lists them")
            # not known (a generation `up` made and switched away from): the profile's own values at its version
            kept = {**(marker.vllm_overrides or {}), "version": marker.vllm_version}  # its version, always
        old_rb, old = _current_runbook(request, record)
        dropped = {key: _profile_value(old, key) for key in from_vllm if key not in kept}  # as the profile has it
        sets = [*[s for s in request.sets if not s.strip().startswith("vllm.")], *vllm_sets({**dropped, **kept})]
        new_rb, new = build_runbook(RunbookRequest(wd, request.profile, sets, request.bench, request.options))
        name = generation_name(new.profile.vllm.version, _vllm_inputs_fingerprint(new_rb))
        if kind == "rollback" and name != before.previous:
            raise UsageError(f"the previous generation {before.previous} was built from other vllm settings than "
                             f"the workdir's now (they make {name})",
                             fix="set the workdir's vllm settings back as they were (`dsv4setup profile show`)")
        if name == from_name:
            raise UsageError(f"generation {name} is already current: these settings change nothing of the venv",
                             fix="name another version with --vllm, or other vllm settings with --set")
        doc: dict[str, Any] = {
            "schema": UPGRADE_SCHEMA, "kind": kind, "ok": False, "workdir": str(wd.root),
            "from": {"generation": from_name, "vllm": old.profile.vllm.version},
            "to": {"generation": name, "vllm": new.profile.vllm.version},
            "changes": {"vllm": {"from": old.profile.vllm.version, "to": new.profile.vllm.version},
                        "patches": patch_changes(list(new.profile.patches), old.profile.vllm.version,
                                                 new.profile.vllm.version),
                        "flags": flag_changes(_serve_argv(old, wd, state), _serve_argv(new, wd, state))},
            "phase": "building", "built": None, "failed": None, "rolled_back": False, "serving": None,
            "log": str(wd.log_file("vllm"))}
        say(f"{kind}: {from_name} (vLLM {old.profile.vllm.version}) -> {name} (vLLM {new.profile.vllm.version})")
        state.upgrade = UpgradeJournal(kind="upgrade" if request.vllm is not None else "rollback", phase="building",
                                       started_at=now_iso(), updated_at=now_iso(),
                                       from_generation=from_name, to_generation=name,
                                       from_version=old.profile.vllm.version, to_version=new.profile.vllm.version,
                                       from_previous=before.previous, from_vllm=from_vllm)
        save_state(wd.state_file, state)

        if kind == "upgrade":
            say(f"building generation {name} beside the current one (the server keeps serving)")
            built, build_state = _build(request, new_rb, name, obs)
            if not built.ok:
                doc["failed"] = _failure(built)
                _journal(state, phase="failed", error=f"building {name}: {doc['failed']['message']}",
                         log=doc["failed"]["log"])
                save_state(wd.state_file, state)
                doc["serving"] = from_name
                return doc
            marker = read_marker(generation_path(wd.root, name))
            assert marker is not None
            marker.records = _records(build_state)
            patches = build_state.steps["patches"].outputs
            marker.patches = {k: list(patches.get(k) or []) for k in ("applied", "upstream")}
            marker.complete = True
            write_marker(generation_path(wd.root, name), marker)
            generation_path(wd.root, name).parent.joinpath(f".{name}.build-state.json").unlink(missing_ok=True)
            doc["built"] = {"generation": name, "patches": marker.patches}
            _journal(state, phase="built")
        records = read_marker(generation_path(wd.root, name))
        assert records is not None

        _journal(state, phase="switching")
        save_state(wd.state_file, state)
        doc["phase"] = "switching"
        say(f"switching to {name}: the server restarts on it, then smoke")
        result = _stop_unit(wd, unit)
        if result is None:
            _switch_to(wd, state, records.records, Pointer(name, from_name))
            result = _serve_through(unit, wd, new.profile, new_rb, obs)
        if result.ok:
            _mark_smoke(wd, name, True)
            _keep_vllm_section(wd, kept)
            _record_vllm_section(wd, name, kept)
            state = load_state(wd.state_file)
            _journal(state, phase="done")
            save_state(wd.state_file, state)
            doc.update(ok=True, phase="done", serving=name)
            return doc

        doc["failed"] = _failure(result)
        _mark_smoke(wd, name, False)
        say(f"{name} failed at {result.failed_step}: switching back to {from_name}")
        state = load_state(wd.state_file)
        _switch_to(wd, state, from_marker.records, before)
        back = _serve_through(unit, wd, old.profile, old_rb, obs)
        state = load_state(wd.state_file)
        _journal(state, phase="failed", error=f"{name} failed at {result.failed_step}: {doc['failed']['message']}"
                 + ("" if back.ok else f"; switching back failed too, at {back.failed_step}"),
                 log=doc["failed"]["log"])
        save_state(wd.state_file, state)
        _mark_smoke(wd, from_name, back.ok)
        doc.update(phase="failed", rolled_back=True, serving=from_name if back.ok else None)
        if not back.ok:
            doc["rollback_failed"] = _failure(back)
        return doc


def generation_rows(workdir: Workdir) -> list[dict[str, Any]]:
    """One row per generation; the current one's patches from the state when its marker has none yet (one the
    vllm step of `up` made: the patches step runs after it)."""
    state = load_state(workdir.state_file) if workdir.state_file.exists() else State()
    record = state.steps.get("patches")
    applied = ({k: list(record.outputs.get(k) or []) for k in ("applied", "upstream")}
               if record is not None and record.status == StepStatus.DONE else {})
    rows = []
    for gen in list_generations(workdir.root):
        m = gen.marker
        rows.append({"name": gen.name, "path": str(gen.path), "vllm": m.vllm_version if m else None,
                     "patches": (m.patches or (applied if gen.current else {})) if m else {},
                     "created_at": m.created_at if m else None,
                     "complete": m.complete if m else None,
                     "last_smoke": m.last_smoke.model_dump() if m and m.last_smoke else None,
                     "current": gen.current, "previous": gen.previous, "ours": m is not None})
    return rows


def _remove(workdir: Workdir, gens: list[Generation], keep: int) -> tuple[list[str], list[dict[str, str]]]:
    pointer = read_pointer(workdir.root)
    current = pointer.current if pointer else current_name(workdir.root)
    names = to_remove([g.name for g in gens], current, pointer.previous if pointer else None, keep)
    removed, refused = [], []
    for name in names:
        path = generation_path(workdir.root, name)
        why = ownership_refusal(workdir.root, path, os.getuid())
        if why is not None:
            refused.append({"path": str(path), "reason": why})
            continue
        shutil.rmtree(path)
        removed.append(str(path))
    return removed, refused


def generations_doc(workdir: Workdir, keep: int | None = None) -> dict[str, Any]:
    """The `dsv4setup.generations/1` document; `keep`: first remove all but the newest `keep` (plus current and
    previous), only those proven ours."""
    removed: list[str] = []
    refused: list[dict[str, str]] = []
    if keep is not None:
        if keep < 0:
            raise UsageError(f"--keep {keep}: expected a number >= 0")
        with workdir_lock(workdir.lock_file, "generations --keep"):
            removed, refused = _remove(workdir, list_generations(workdir.root), keep)
    journal = load_state(workdir.state_file).upgrade if workdir.state_file.exists() else None
    return {"schema": GENERATIONS_SCHEMA, "workdir": str(workdir.root), "current": current_name(workdir.root),
            "generations": generation_rows(workdir), "removed": removed, "refused": refused,
            "last_upgrade": journal.model_dump(mode="json") if journal else None}


def failed_upgrade(state: State) -> UpgradeJournal | None:
    """The last upgrade or rollback when it failed (for `next`)."""
    return state.upgrade if state.upgrade is not None and state.upgrade.phase == "failed" else None


def tail_of(log: str | None) -> list[str]:
    return attempt_tail(Path(log)) if log else []

