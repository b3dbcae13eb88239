"""Profile ranking against snapshots: in-test profiles, then the shipped ones."""

from __future__ import annotations

import pytest

from dsv4setup.profiles.loader import load_all_profiles
from dsv4setup.profiles.match import best_profile, match_profile, rank_profiles
from dsv4setup.profiles.model import Profile
from tests.preflight.conftest import load_fixture, make_profile


def test_the_more_specific_profile_wins(profiles: dict[str, Profile]) -> None:
    """Both match 2x Max-Q; the one naming Max-Q and the interconnect is more specific."""
    ranked = rank_profiles(load_fixture("rtx-pro-6000-maxq-x2"), list(profiles.values()))
    assert [m.name for m in ranked[:2]] == ["maxq-x2", "rtx6000-x2"]
    assert ranked[0].matched and ranked[1].matched and ranked[0].score > ranked[1].score
    assert "GPU name NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition matches 'Max-Q'" in ranked[0].reasons
    assert all(not m.matched for m in ranked[2:])


def test_mismatch_reasons_say_what_differs(profiles: dict[str, Profile]) -> None:
    match = match_profile(load_fixture("h200-x1"), profiles["h200-tp2"])
    assert not match.matched
    assert "no: needs at least 2 GPUs, this machine has 1" in match.reasons
    assert "SM 9.0" in match.reasons  # what held is listed too
    gh = match_profile(load_fixture("rtx-pro-6000-maxq-x2"), profiles["gh200-x2"])
    assert "no: needs an aarch64 host, this one is x86_64" in gh.reasons
    assert "no: needs SM 9.0, the GPUs are SM 12.0" in gh.reasons


def test_min_gpu_count_lets_a_tp2_profile_run_on_8_gpus(profiles: dict[str, Profile]) -> None:
    best = best_profile(load_fixture("h200-x8-nvlink"), list(profiles.values()))
    assert best is not None and best.name == "h200-tp2"
    assert "nvlink interconnect" in best.reasons


def test_exact_gpu_count_rejects_more_gpus(profiles: dict[str, Profile]) -> None:
    match = match_profile(load_fixture("rtx-pro-6000-server-x4"), profiles["rtx6000-x2"])
    assert not match.matched and "no: needs exactly 2 GPUs, this machine has 4" in match.reasons


def test_cpu_only_profile_needs_a_machine_without_nvidia_gpus(profiles: dict[str, Profile]) -> None:
    cpu = profiles["cpu-demo"]
    assert not match_profile(load_fixture("h200-x1"), cpu).matched
    no_driver = match_profile(load_fixture("no-driver"), cpu)
    assert not no_driver.matched  # GPUs on the PCI bus, only the driver is missing
    assert any("on the PCI bus" in r for r in no_driver.reasons)
    cpu_host = load_fixture("no-driver")
    cpu_host["host"]["nvidia_pci_gpus"] = 0
    assert best_profile(cpu_host, list(profiles.values())).profile is cpu  # type: ignore[union-attr]


def test_gpu_profiles_do_not_match_without_gpus() -> None:
    anything = make_profile("any-gpu")  # empty match section: any machine with a GPU
    assert match_profile(load_fixture("b200-x2"), anything).matched
    assert not match_profile(load_fixture("no-driver"), anything).matched
    assert best_profile(load_fixture("no-driver"), [anything]) is None


def test_a_multinode_profile_matches_one_node(profiles: dict[str, Profile]) -> None:
    match = match_profile(load_fixture("gb10-x1"), profiles["gb10-x2"])
    assert match.matched, match.reasons


def test_ties_prefer_verified_then_name() -> None:
    a = make_profile("b-unverified", match={"compute_capability": ["10.0"]})
    b = make_profile("a-verified", verified=True, match={"compute_capability": ["10.0"]})
    c = make_profile("a-unverified", match={"compute_capability": ["10.0"]})
    assert [m.name for m in rank_profiles(load_fixture("b200-x2"), [a, c, b])] == [
        "a-verified", "a-unverified", "b-unverified"]


SHIPPED_BEST = {
    "rtx-pro-6000-maxq-x2": "rtx-pro-6000-maxq-x2",
    "rtx-pro-6000-maxq-x2-iommu": "rtx-pro-6000-maxq-x2",
    "rtx-pro-6000-server-x4": "rtx-pro-6000-server-x4",
    "container-small-shm": "rtx-pro-6000-x2",
    "h200-x8-nvlink": "h200-tp2",
    "h200-x1": None,
    "gh200-x2": "gh200-x2",
    "gb10-x1": "dgx-spark-gb10-x2",
    "b200-x2": "b200-x2",
    "l40s-x1": None,
    "a100-x2": None,
    "no-driver": None,
}


@pytest.mark.parametrize(("fixture", "expected"), sorted(SHIPPED_BEST.items()))
def test_shipped_profiles_pick(fixture: str, expected: str | None) -> None:
    best = best_profile(load_fixture(fixture), load_all_profiles())
    assert (best.name if best else None) == expected
