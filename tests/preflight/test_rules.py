"""rules.yaml: loads, and what the code and the other data files rely on is in it."""

from __future__ import annotations

from dsv4setup.hardware.arch import arch_from_capability, arch_table
from dsv4setup.hardware.rules import load_rules, parse_rules, vtuple
from dsv4setup.profiles.model import VllmSpec


def test_rules_load_with_every_finding_the_checks_use() -> None:
    rules = load_rules()
    assert {"sm12x", "pcie_custom_all_reduce", "p2p_unavailable", "iommu_translated", "hopper_c2c"} <= set(
        rules.findings)
    assert set(rules.spec_families) == {"hopper", "sm12x"}
    assert {a.family for a in rules.archs.values()} >= {"hopper", "sm12x"}
    assert all(r.only_families and r.status in ("fail", "warn") for r in rules.serve_arg_rules)


def test_every_supported_arch_has_an_nvcc_target_in_the_toolkit_table() -> None:
    table = arch_table()
    for cc in load_rules().archs:
        assert arch_from_capability(cc) in table, cc


def test_default_vllm_version_is_the_profile_default() -> None:
    assert load_rules().default_vllm_version == VllmSpec().version


def test_version_gated_rules() -> None:
    rules = load_rules()
    assert rules.spec_families["hopper"].allowed_for("0.32.0") == (0, 1)
    assert rules.spec_families["hopper"].allowed_for("0.33.0+cu130") == (0, 1, 3)
    assert rules.driver_build("0.33.0").driver_min == "580"
    assert rules.driver_build("0.30.1").cuda == "12.8"
    sm12x = rules.findings["sm12x"]
    assert "VLLM_TRITON_MLA_SPARSE_HEAD_BLOCK_SIZE" not in sm12x.env_for("0.33.0")
    assert sm12x.env_for("0.32.0")["VLLM_TRITON_MLA_SPARSE_HEAD_BLOCK_SIZE"] == "4"


def test_vtuple() -> None:
    assert vtuple("580.126.09") == (580, 126, 9)
    assert vtuple("0.33.0+cu130") == (0, 33, 0)
    assert vtuple("2.14.0.dev20260101") == (2, 14, 0)
    assert vtuple(None) == () and vtuple("") == ()


def test_thresholds_are_data_not_code() -> None:
    """The same snapshot is judged differently when only the data changes."""
    import yaml

    from dsv4setup.hardware.rules import RULES_FILE
    from dsv4setup.preflight.report import build_report
    from tests.preflight.conftest import load_fixture

    snap = load_fixture("b200-x2")  # Python 3.12.3
    status = {r.id: r.status for r in build_report(snap).checks}
    assert status["python.version"] == "pass"
    raw = yaml.safe_load(RULES_FILE.read_text())
    raw["python"]["max_exclusive"] = "3.12"
    raw["host"]["gpu"]["shm_fail_below_gb"] = 10_000
    status = {r.id: r.status for r in build_report(snap, rules=parse_rules(raw)).checks}
    assert status["python.version"] == "fail" and status["host.shm"] == "fail"
