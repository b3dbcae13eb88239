"""Which profile a workdir runs, with every override applied, and where each value came from.

Name: `--profile NAME` (or a path to a profile file), else `profile:` in the workdir's
dsv4setup.yaml, else the profile recorded in state.json, else the best match for this
machine, else the profile derived for its GPUs (profiles/derive.py; never the CPU demo: that
takes `--profile cpu-tiny`). The machine is looked at only through the snapshot or the probe
(`preflight.snapshot.take_snapshot`) the caller passes in: the profiles never reach up into the
step packages. A derived profile has no file: its name (`derived-...`) is derived
again from the machine each time, and refused when the machine now derives another.
Values, lowest first: the profile file, its context preset (serve.max_model_len,
max_num_seqs, gpu_memory_utilization), dsv4setup.yaml, then each `--set` in order.
An explicit serve key therefore beats the preset wherever it is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsv4setup.core.errors import DsvError, UsageError
from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.flags import pin_config_files
from dsv4setup.profiles.loader import (
    find_profile_file,
    is_path,
    load_named_file,
    load_profile_file,
    profile_data,
    profile_index,
    read_yaml,
)
from dsv4setup.profiles.model import Profile
from dsv4setup.profiles.overrides import (
    Layer,
    WorkdirOverrides,
    locate,
    merge_layers,
    origins_of,
    read_workdir_overrides,
    set_layer,
    validate_layers,
)

if TYPE_CHECKING:
    from dsv4setup.profiles.derive import Derivation

Snapshot = dict[str, Any]
Probe = Callable[[Workdir], Snapshot]  # reads this machine's hardware snapshot (preflight.snapshot.take_snapshot)
PROFILE_SET_SCHEMA = "dsv4setup.profile-set/1"
CONFIG_COPIES_DIR = "config"  # <workdir>/config/vllm-config.<sha256>.yaml: the --config files as checked


class NoProfileError(DsvError):
    """No profile chosen, and none is usable on this machine (exit 1, as the doctor's failed check)."""


@dataclass
class ResolvedProfile:
    """The final profile, validated, plus where every value (dotted key) came from."""

    profile: Profile
    origins: dict[str, str]
    source_file: Path | None = None
    selected_by: str = "--profile"  # --profile | workdir:<file> | state:<file> | auto
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # workdir + --set, merged (bench fingerprints)


def _machine(workdir: Workdir, snapshot: Snapshot | None, probe: Probe | None) -> Snapshot:
    """This machine's snapshot: the one given, else the probe's; neither: the caller cannot pick by hardware."""
    if snapshot is not None:
        return snapshot
    if probe is None:
        raise UsageError("no profile chosen, and none can be picked for this machine here",
                         fix="pass --profile NAME (`dsv4setup doctor` recommends one)")
    return probe(workdir)


def _auto_pick(workdir: Workdir, snapshot: Snapshot | None, probe: Probe | None) -> str:
    """The best shipped profile for this machine, else the one derived for its GPUs; the demo never."""
    fix = "run `dsv4setup doctor` to see the recommended profile, then pass --profile NAME"
    from dsv4setup.hardware.rules import load_rules
    from dsv4setup.profiles.derive import derive_for
    from dsv4setup.profiles.loader import load_all_profiles
    from dsv4setup.profiles.match import no_gpu_fix, rank_profiles

    snap = _machine(workdir, snapshot, probe)
    best = next((m for m in rank_profiles(snap, load_all_profiles()) if m.matched and not m.profile.demo), None)
    if best is not None:
        return best.name
    derivation = derive_for(snap)
    if derivation.profile is None:
        raise NoProfileError(f"no profile chosen, and none is usable here: {derivation.why_not}",
                             fix=no_gpu_fix(snap, load_rules()))
    if not derivation.fits:
        raise NoProfileError(f"no profile chosen: no shipped profile matches, and the one derived for these GPUs "
                             f"({derivation.profile.name}) does not fit: {derivation.notes[-1]}",
                             fix=f"{fix} (gpu.memory says what would fit)")
    return derivation.profile.name


def _choose_name(workdir: Workdir, name: str | None, overrides: WorkdirOverrides | None,
                 snapshot: Snapshot | None, probe: Probe | None) -> tuple[str, str]:
    if name:
        return name, "--profile"
    if overrides is not None and overrides.profile:
        return overrides.profile, f"workdir:{overrides.path}"
    recorded = load_state(workdir.state_file).profile
    if recorded:
        return recorded, f"state:{workdir.state_file}"
    return _auto_pick(workdir, snapshot, probe), "auto"


def derived_named(name: str, derivation: Derivation) -> Profile:
    """The derived profile of this name, if the machine derives it."""
    if derivation.profile is not None and derivation.profile.name == name:
        return derivation.profile
    now = derivation.profile.name if derivation.profile is not None else f"none ({derivation.why_not})"
    raise UsageError(f"profile {name} was derived for other hardware; this machine derives {now}",
                     fix="pass --profile with a shipped profile, or keep a derived one in a file: "
                          "`dsv4setup profile show --derived > FILE`, then --profile FILE")


def _base_layer(chosen: str, selected_by: str, workdir: Workdir,
                snapshot: Snapshot | None, probe: Probe | None) -> tuple[Layer, Path | None]:
    """The profile itself as the lowest layer: its file, or the document derived for this machine."""
    from dsv4setup.profiles.derive import derive_for, is_derived_name

    if is_derived_name(chosen) and not is_path(chosen) and chosen not in profile_index(workdir):
        derivation = derive_for(_machine(workdir, snapshot, probe))
        derived_named(chosen, derivation)
        return Layer(f"profile:{chosen} (derived for this machine)", derivation.document or {},
                     lambda _loc: f"the profile derived for this machine ({chosen})"), None
    path = _profile_file(chosen, selected_by, workdir)
    doc = read_yaml(path)
    return Layer(f"profile:{path}", profile_data(doc), doc.where), path


def _preset_layer(profile: Profile, layers: list[Layer]) -> Layer | None:
    if profile.preset is None:
        return None
    defined_at = locate(("presets", profile.preset), layers)
    return Layer(f"preset:{profile.preset}", {"serve": profile.preset_values()},
                 lambda _loc: f"preset:{profile.preset} (defined at {defined_at})")


def _profile_file(chosen: str, selected_by: str, workdir: Workdir) -> Path:
    """The chosen profile's file, validated on its own first (its own errors read best without overrides)."""
    try:
        path = find_profile_file(chosen, workdir)
    except UsageError as exc:
        if selected_by == "--profile":
            raise
        raise UsageError(f"{exc.message} (the name comes from {selected_by})",
                         fix=f"pass --profile NAME, or fix the name there; {exc.fix}") from None
    if is_path(chosen):
        load_profile_file(path)
    else:
        load_named_file(path)
    return path


def resolve_profile(workdir: Workdir, name: str | None, sets: list[str],
                    snapshot: Snapshot | None = None, probe: Probe | None = None) -> ResolvedProfile:
    """The profile to run, merged with dsv4setup.yaml and --set, validated; see the module docstring.

    `snapshot`: the machine's hardware snapshot when the caller has one, else `probe` reads it when no
    profile is named (neither: a profile must be named somewhere).
    """
    overrides = read_workdir_overrides(workdir)
    set_layers = [set_layer(item) for item in sets]
    chosen, selected_by = _choose_name(workdir, name, overrides, snapshot, probe)
    base, path = _base_layer(chosen, selected_by, workdir, snapshot, probe)
    layers = [base]
    layers += [overrides.layer] if overrides else []
    layers += set_layers
    profile = _validated(layers, workdir)
    preset = _preset_layer(profile, layers)
    if preset is not None:
        layers.insert(1, preset)
        profile = _validated(layers, workdir)
    return ResolvedProfile(profile=_with_pinned_config(profile, workdir), origins=origins_of(profile, layers),
                           source_file=path, selected_by=selected_by, preset=profile.preset,
                           overrides=merge_layers(layers[2 if preset else 1:]))


def _with_pinned_config(profile: Profile, workdir: Workdir) -> Profile:
    """The profile serving the copy of each `--config FILE` in serve.extra_args checked just now (flags.py's
    pin_config_files: vLLM reads the file at start, so a later change of the user's file must not reach it)."""
    try:
        pinned = pin_config_files(profile.serve.extra_args, workdir.root / CONFIG_COPIES_DIR)
    except ValueError as exc:
        raise UsageError(f"serve.extra_args: {exc}", fix="correct the --config file, or drop it from "
                         "serve.extra_args (`dsv4setup profile show` says where it is set)") from None
    if pinned == profile.serve.extra_args:
        return profile
    return profile.model_copy(update={"serve": profile.serve.model_copy(update={"extra_args": pinned})})


def _validated(layers: list[Layer], workdir: Workdir) -> Profile:
    """validate_layers, its errors naming each value and, where known, the literal fix (profiles/fixes.py)."""
    from dsv4setup.profiles.fixes import with_values
    from dsv4setup.profiles.loader import ProfileError

    try:
        return validate_layers(layers)
    except ProfileError as exc:
        raise with_values(exc, merge_layers(layers), workdir.root, workdir.overrides_file) from None


def profile_set_doc(workdir: Workdir, resolved: ResolvedProfile, keys: list[str]) -> dict[str, Any]:
    """The `dsv4setup.profile-set/1` document of `profile set`/`unset`: each key's origin now (None: unset)."""
    return {"schema": PROFILE_SET_SCHEMA, "ok": True, "file": str(workdir.overrides_file),
            "profile": resolved.profile.name, "set": {k: resolved.origins.get(k) for k in keys}}


def persist_sets(workdir: Workdir, name: str | None, sets: list[str], probe: Probe | None = None) -> ResolvedProfile:
    """Write `KEY=VALUE` overrides into the workdir's dsv4setup.yaml, so every later run keeps them.

    Each item is checked like `--set`; the merged profile must still validate, else the file
    is restored as it was and the error says why. Holds the workdir lock (LockHeldError while
    an `up` or a bench runs: the deployment does not change under it).
    """
    from dsv4setup.core.fsutil import atomic_write_text
    from dsv4setup.core.lock import workdir_lock
    from dsv4setup.profiles.overrides import parse_set, write_override

    resolve_profile(workdir, name, sets, probe=probe)  # the same values as --set must resolve first
    file = workdir.overrides_file
    with workdir_lock(workdir.lock_file, "profile set"):
        before = file.read_text(encoding="utf-8") if file.exists() else None
        try:
            for item in sets:
                path, value = parse_set(item)
                write_override(workdir, ".".join(str(p) for p in path), value)
            return resolve_profile(workdir, name, [], probe=probe)
        except UsageError:
            if before is None:
                file.unlink(missing_ok=True)
            else:
                atomic_write_text(file, before)
            raise


def persist_unset(workdir: Workdir, name: str | None, dotted_keys: list[str],
                  probe: Probe | None = None) -> ResolvedProfile:
    """Remove kept overrides (`profile unset KEY`): the profile's own value applies again.

    Refuses a key the workdir's dsv4setup.yaml does not set (the message lists those it does);
    the remaining file must still resolve, else it is left as it was.
    """
    import yaml

    from dsv4setup.core.fsutil import atomic_write_text
    from dsv4setup.profiles.overrides import EVIDENCE_KEY, OVERRIDES_HEADER, flatten, read_workdir_overrides

    file = workdir.overrides_file
    overrides = read_workdir_overrides(workdir)
    data = dict(overrides.layer.data) if overrides is not None else {}
    kept = flatten(data, keep_empty=False)
    for key in dotted_keys:
        if not any(k == key or k.startswith(key + ".") for k in kept):
            raise UsageError(f"profile unset {key}: {file} does not set it",
                             fix=f"keys set there: {', '.join(sorted(kept)) or 'none'}")
        _drop(data, key.split("."))
    evidence = {k: v for k, v in (overrides.evidence if overrides is not None else {}).items() if k not in dotted_keys}
    doc = ({"profile": overrides.profile} if overrides is not None and overrides.profile else {}) | data
    if evidence:
        doc[EVIDENCE_KEY] = evidence
    from dsv4setup.core.lock import workdir_lock

    with workdir_lock(workdir.lock_file, "profile unset"):
        before = file.read_text(encoding="utf-8")
        atomic_write_text(file, OVERRIDES_HEADER + (yaml.safe_dump(doc, sort_keys=False) if doc else ""))
        try:
            return resolve_profile(workdir, name, [], probe=probe)
        except UsageError:
            atomic_write_text(file, before)
            raise


def _drop(data: dict[Any, Any], path: list[str]) -> None:
    """Delete path from nested mappings, pruning mappings left empty (`nodes.1` matches a list index key 1)."""
    rest = path[1:]
    head = next((key for key in data if str(key) == path[0]), path[0])
    if rest and isinstance(data.get(head), dict):
        child = dict(data[head])
        _drop(child, rest)
        if child:
            data[head] = child
        else:
            data.pop(head)
    elif not rest:
        data.pop(head, None)
