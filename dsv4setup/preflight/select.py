"""Which profile the doctor judges against.

This machine: `--profile NAME`, else the workdir's choice (`profile:` in dsv4setup.yaml, else
the one `up` last ran with), else the best match, else a profile derived from the GPU family's
shipped one (profiles/derive.py); the workdir's overrides (dsv4setup.yaml) apply to it as they
do for `up` (profiles.resolve). A saved snapshot (another machine): the named profile as shipped
(or derived from that snapshot), else the best match, else the derived one. The CPU demo
(cpu-tiny) is never picked by itself: only `--profile cpu-tiny` or the workdir's choice judge it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsv4setup.core.workdir import Workdir

if TYPE_CHECKING:
    from dsv4setup.core.state import State
    from dsv4setup.preflight.report import Judged
    from dsv4setup.profiles.derive import Derivation
    from dsv4setup.profiles.match import ProfileMatch
    from dsv4setup.profiles.model import Profile


@dataclass(frozen=True)
class ProfileChoice:
    profile: Profile | None
    matches: list[ProfileMatch]  # every known profile, best first
    how: str  # "named", "chosen in the workdir: <file>", "last used in the workdir <path> ...", "best match",
    # "derived for this machine", "none usable"
    derivation: Derivation | None = None  # when derived, or tried and nothing could be derived

    def judged(self) -> Judged:
        """What build_report judges against."""
        from dsv4setup.preflight.report import Judged

        d = self.derivation
        derived = d is not None and self.profile is not None and d.profile is not None \
            and d.profile.name == self.profile.name
        return Judged(self.profile, self.matches, d.why_not if d is not None else None,
                      d.notes if derived and d is not None else ())


def choice_fields(workdir: Workdir, choice: ProfileChoice) -> dict[str, Any]:
    """What the doctor document says of where it looked: the workdir its plan is for (path, why that one; on
    a --snapshot, the other machine's) and how the profile was chosen (a workdir's choice names its path)."""
    return {"workdir": str(workdir.root), "workdir_chosen_by": workdir.chosen_by, "profile_chosen_by": choice.how}


def known_profiles(workdir: Workdir | None) -> list[Profile]:
    """Shipped profiles plus the workdir's own (`<workdir>/profiles/*.yaml`)."""
    from dsv4setup.profiles.loader import load_named_file, profile_index

    return [load_named_file(path) for path in profile_index(workdir).values()]


def last_used_profile(workdir: Workdir) -> str | None:
    """The profile `up` last ran with in this workdir (from its state file), if any.

    An unreadable state file is `up`'s problem to report, not the doctor's: it counts as none.
    """
    if not workdir.state_file.exists():
        return None
    from dsv4setup.core.errors import DsvError
    from dsv4setup.core.state import load_state

    try:
        return load_state(workdir.state_file).profile
    except DsvError:
        return None


def workdir_state(workdir: Workdir) -> State:
    """Earlier steps' records in this workdir (the serve command reads the checkpoint's); empty if unreadable."""
    from dsv4setup.core.errors import DsvError
    from dsv4setup.core.state import State, load_state

    if not workdir.state_file.exists():
        return State()
    try:
        return load_state(workdir.state_file)
    except DsvError:
        return State()


def _workdir_choice(workdir: Workdir) -> tuple[str | None, str]:
    from dsv4setup.profiles.overrides import read_workdir_overrides

    overrides = read_workdir_overrides(workdir)
    if overrides is not None and overrides.profile:
        return overrides.profile, f"chosen in the workdir: {overrides.path}"
    return last_used_profile(workdir), f"last used in the workdir {workdir.root} (its state.json)"


def select_profile(snapshot: dict[str, Any], workdir: Workdir | None, name: str | None = None,
                   use_workdir: bool = True) -> ProfileChoice:
    """The profile to judge against and every profile ranked for this snapshot.

    `name` is a profile name (a derived one included) or a path to a profile file. `use_workdir`:
    this machine's workdir may pick the profile and its overrides apply (False for a snapshot of
    another machine).
    """
    from dsv4setup.profiles.derive import derive_for, is_derived_name
    from dsv4setup.profiles.loader import find_profile_file, load_profile_file, profile_index
    from dsv4setup.profiles.match import rank_profiles

    matches = rank_profiles(snapshot, known_profiles(workdir))
    how = "named"
    if name is None and use_workdir and workdir is not None:
        name, how = _workdir_choice(workdir)
    derivation = None
    if name is None:
        best = next((m for m in matches if m.matched and not m.profile.demo), None)
        if best is not None:
            name, how = best.name, "best match"
        else:
            derivation = derive_for(snapshot)
            if derivation.profile is None:
                return ProfileChoice(None, matches, "none usable", derivation)
            name, how = derivation.profile.name, "derived for this machine"
    elif is_derived_name(name) and name not in profile_index(workdir):
        derivation = derive_for(snapshot)
    if use_workdir and workdir is not None:
        from dsv4setup.profiles.resolve import resolve_profile

        resolved = resolve_profile(workdir, name, [], snapshot=snapshot)
        return ProfileChoice(resolved.profile, matches, how, derivation)
    if derivation is not None:
        from dsv4setup.profiles.resolve import derived_named

        return ProfileChoice(derived_named(name, derivation), matches, how, derivation)
    by_name = {m.name: m.profile for m in matches}
    return ProfileChoice(by_name.get(name) or load_profile_file(find_profile_file(name, workdir)), matches, how)
