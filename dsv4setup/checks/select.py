"""Which profile the doctor judges against: the named one, the workdir's last one, else the best match."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsv4setup.workdir import Workdir

if TYPE_CHECKING:
    from dsv4setup.profiles.match import ProfileMatch
    from dsv4setup.profiles.model import Profile


@dataclass(frozen=True)
class ProfileChoice:
    profile: Profile | None
    matches: list[ProfileMatch]  # every known profile, best first
    how: str  # "named", "last used in the workdir", "best match", "no profile matches"


def known_profiles(workdir: Workdir | None) -> list[Profile]:
    """Shipped profiles plus the workdir's own (`<workdir>/profiles/*.yaml`)."""
    from dsv4setup.profiles.loader import load_named_file, profile_index

    return [load_named_file(path) for path in profile_index(workdir).values()]


def last_used_profile(workdir: Workdir) -> str | None:
    """The profile `up` last ran with in this workdir (from its state file), if any."""
    if not workdir.state_file.exists():
        return None
    from dsv4setup.state import load_state

    return load_state(workdir.state_file).profile


def select_profile(snapshot: dict[str, Any], workdir: Workdir | None, name: str | None = None,
                   use_last: bool = True) -> ProfileChoice:
    """The profile to judge against and every profile ranked for this snapshot.

    `name` is a profile name or a path to a profile file. Without it: the workdir's last used
    profile when `use_last`, else the best match; None when nothing matches.
    """
    from dsv4setup.profiles.loader import find_profile_file, load_profile_file
    from dsv4setup.profiles.match import rank_profiles

    profiles = known_profiles(workdir)
    matches = rank_profiles(snapshot, profiles)
    by_name = {p.name: p for p in profiles}
    if name is not None:
        return ProfileChoice(by_name.get(name) or load_profile_file(find_profile_file(name, workdir)), matches,
                             "named")
    if use_last and workdir is not None:
        last = last_used_profile(workdir)
        if last is not None and last in by_name:
            return ProfileChoice(by_name[last], matches, "last used in the workdir")
    if matches and matches[0].matched:
        return ProfileChoice(matches[0].profile, matches, "best match")
    return ProfileChoice(None, matches, "no profile matches")
