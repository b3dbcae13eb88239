"""Every machine of the field notes, as a snapshot fixture, judged: check verdicts and recommendation."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from dsv4setup.preflight.report import DoctorReport, build_report
from dsv4setup.preflight.schemalite import Validator
from dsv4setup.preflight.select import select_profile
from dsv4setup.preflight.snapshot import hardware_schema
from dsv4setup.profiles.model import Profile
from tests.preflight.conftest import SNAPSHOT_FIXTURES, doctor_validator, hardware_validator, load_fixture


@dataclass
class Expect:
    fixture: str
    profile: str | None  # an in-test profile (conftest.profiles); None: no profile; DERIVED: as `doctor` chooses
    ok: bool
    statuses: dict[str, str]
    tp: int | None = None  # None: no recommendation expected
    k: int | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    env_absent: tuple[str, ...] = ()


SM12X_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0", "TORCH_CUDA_ARCH_LIST": "12.0a"}
GONE_IN_033 = "VLLM_TRITON_MLA_SPARSE_HEAD_BLOCK_SIZE"  # vllm/envs.py of 0.33.0 no longer has it
CAR = "--disable-custom-all-reduce"
DERIVED = "(chosen as doctor does)"

CASES = [
    Expect("rtx-pro-6000-maxq-x2", "maxq-x2", True,
           {"gpu.architecture": "pass", "gpu.memory": "pass", "topology.interconnect": "warn",
            "topology.p2p": "pass", "topology.iommu": "pass", "driver.version": "pass", "host.profile": "pass",
            "vllm.speculative_tokens": "pass"},
           tp=2, k=1, args=[CAR], env=SM12X_ENV, env_absent=("NCCL_P2P_DISABLE", GONE_IN_033)),
    Expect("rtx-pro-6000-maxq-x2-iommu", "maxq-x2", True,
           {"topology.iommu": "warn", "topology.interconnect": "warn", "topology.p2p": "pass"},
           tp=2, k=1, args=[CAR], env={**SM12X_ENV, "NCCL_P2P_DISABLE": "1"}),
    Expect("rtx-pro-6000-server-x4", "rtx6000-x4", True,
           {"topology.interconnect": "pass", "gpu.count": "pass", "gpu.memory": "pass", "gpu.identical": "pass"},
           tp=4, k=1, args=[CAR], env=SM12X_ENV, env_absent=("NCCL_P2P_DISABLE", GONE_IN_033)),
    Expect("h200-x8-nvlink", "h200-tp2", True,
           {"gpu.count": "pass", "gpu.memory": "pass", "topology.interconnect": "pass", "topology.p2p": "pass",
            "host.profile": "pass"},
           tp=2, k=1, args=[], env={}),
    Expect("h200-x1", None, False, {"gpu.memory": "fail", "gpu.architecture": "pass", "host.profile": "fail"}),
    Expect("h200-x1", DERIVED, False, {"gpu.memory": "fail", "host.profile": "pass"}, tp=1, k=1),
    Expect("h200-x1", "h200-tp2", False, {"gpu.count": "fail", "host.profile": "warn"}, tp=2, k=1),
    Expect("gh200-x2", "gh200-x2", True,
           {"topology.p2p": "warn", "vllm.speculative_tokens": "warn", "gpu.memory": "pass", "host.platform": "pass"},
           tp=2, k=1, args=[CAR], env={"NCCL_P2P_DISABLE": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0"}),
    Expect("gb10-x1", None, False, {"gpu.memory": "fail", "gpu.architecture": "pass", "gpu.pcie_link": "skip"},
           env={"VLLM_USE_FLASHINFER_SAMPLER": "0", "TORCH_CUDA_ARCH_LIST": "12.1a"}),
    Expect("gb10-x1", "gb10-x2", False, {"gpu.memory": "fail", "topology.interconnect": "skip"}, tp=2, k=1),
    Expect("b200-x2", "b200-x2", True, {"gpu.architecture": "pass", "topology.interconnect": "pass",
                                        "vllm.speculative_tokens": "pass"}, tp=2, k=2, args=[], env={}),
    Expect("l40s-x1", DERIVED, False, {"gpu.architecture": "fail", "driver.version": "fail", "host.profile": "fail"}),
    Expect("a100-x2", DERIVED, False, {"gpu.architecture": "fail", "driver.version": "fail", "host.profile": "fail"}),
    Expect("no-driver", DERIVED, False, {"driver.present": "fail", "driver.version": "skip", "gpu.present": "skip",
                                         "host.shm": "pass", "host.profile": "fail"}),
    Expect("cpu-only", DERIVED, False, {"driver.present": "fail", "host.profile": "fail", "host.ram": "pass"}),
    Expect("cpu-only", "cpu-demo", True, {"driver.present": "skip", "host.profile": "warn", "gpu.present": "skip"},
           tp=1, k=1),
    Expect("h100-pcie-x4", DERIVED, True,
           {"host.profile": "pass", "gpu.memory": "pass", "gpu.count": "pass", "topology.interconnect": "pass",
            "toolkit.arch": "pass", "vllm.speculative_tokens": "pass"},
           tp=4, k=1, env_absent=("NCCL_P2P_DISABLE",)),
    Expect("b300-x2", DERIVED, True,
           {"host.profile": "pass", "gpu.memory": "pass", "toolkit.arch": "pass", "gpu.architecture": "pass"},
           tp=1, k=1),
    Expect("h20-x8", DERIVED, True,
           {"host.profile": "pass", "gpu.memory": "pass", "topology.interconnect": "pass", "gpu.count": "pass"},
           tp=2, k=1),
    Expect("no-driver", "h200-tp2", False, {"driver.present": "fail", "gpu.memory": "skip"}, tp=2, k=1),
    Expect("no-driver", "cpu-demo", True, {"driver.present": "skip", "host.profile": "warn", "host.ram": "pass"},
           tp=1, k=1, args=[], env={}),
    Expect("container-small-shm", "rtx6000-x2", False,
           {"host.shm": "fail", "topology.iommu": "warn", "toolkit.nvcc": "pass", "gpu.memory": "pass"},
           tp=2, k=1, args=[CAR], env=SM12X_ENV, env_absent=("NCCL_P2P_DISABLE", GONE_IN_033)),
]


def judge(snap: dict[str, Any], profile: str | None, profiles: dict[str, Profile]) -> DoctorReport:
    if profile == DERIVED:
        return build_report(snap, select_profile(snap, None, use_workdir=False).judged())
    return build_report(snap, profiles[profile] if profile else None)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.fixture}+{c.profile}")
def test_fixture_verdicts(case: Expect, profiles: dict[str, Profile]) -> None:
    snap = load_fixture(case.fixture)
    report = judge(snap, case.profile, profiles)
    got = {r.id: r.status for r in report.checks}
    assert {k: got[k] for k in case.statuses} == case.statuses, [r for r in report.checks if r.id in case.statuses]
    assert report.ok is case.ok, report.failures
    for r in report.checks:
        assert r.summary
        assert (r.fix is not None) == (r.status in ("warn", "fail")), r
    found = report.findings
    assert found["serve_args"] == case.args
    assert {k: found["env"].get(k) for k in case.env} == case.env
    assert not set(case.env_absent) & set(found["env"])
    rec = report.recommendation
    if case.tp is None:
        assert rec is None
    else:
        assert rec is not None
        assert (rec["tensor_parallel_size"], rec["num_speculative_tokens"]) == (case.tp, case.k)
        assert rec["profile"] == (report.profile.name if case.profile == DERIVED and report.profile else case.profile)
        assert set(case.args) <= set(rec["serve_args"])  # the serve command: the profile plus the findings
        assert {k: rec["env"].get(k) for k in case.env} == case.env
        assert report.profile is not None and not set(case.env_absent) & (set(rec["env"]) - set(report.profile.env))
    assert list(doctor_validator().iter_errors(report.to_doc())) == []


def test_every_fixture_has_a_verdict_case() -> None:
    assert {p.stem for p in SNAPSHOT_FIXTURES} == {c.fixture for c in CASES}


@pytest.mark.parametrize("path", SNAPSHOT_FIXTURES, ids=lambda p: p.stem)
def test_fixture_is_a_valid_snapshot(path: Any) -> None:
    doc = load_fixture(path.stem)
    assert list(hardware_validator().iter_errors(doc)) == []
    assert Validator(hardware_schema()).errors(doc) == []


def test_summaries_carry_the_measured_values(profiles: dict[str, Profile]) -> None:
    checks = {r.id: r for r in build_report(load_fixture("h200-x1")).checks}
    assert "1x 150.8 GB x 0.92 = 138.7 GB usable < 157.5 GB needed" in checks["gpu.memory"].summary
    assert "TP=2" in checks["gpu.memory"].fix  # two such GPUs fit
    shm = {r.id: r for r in build_report(load_fixture("container-small-shm"), profiles["rtx6000-x2"]).checks}
    assert shm["host.shm"].summary.startswith("/dev/shm 64 MiB < 1 GB")
    assert "--shm-size=16g --ipc=host" in (shm["host.shm"].fix or "")
    gb10 = {r.id: r for r in build_report(load_fixture("gb10-x1")).checks}
    assert "unified (host RAM" in gb10["gpu.memory"].summary


def test_sm12x_env_for_an_older_vllm_build_keeps_the_triton_head_block(profiles: dict[str, Profile]) -> None:
    doc = profiles["maxq-x2"].document()
    doc["vllm"]["version"] = "0.32.0"
    rec = build_report(load_fixture("rtx-pro-6000-maxq-x2"), Profile.model_validate(doc)).recommendation
    assert rec is not None and rec["env"][GONE_IN_033] == "4"


def test_multinode_profile_with_the_other_node_configured_warns(profiles: dict[str, Profile]) -> None:
    doc = profiles["gb10-x2"].document()
    doc["multinode"]["nodes"][1]["address"] = "10.0.0.2"
    checks = {r.id: r for r in build_report(load_fixture("gb10-x1"), Profile.model_validate(doc)).checks}
    assert checks["gpu.memory"].status == "warn"
    assert "2 nodes x 108.8 GB = 217.6 GB usable" in checks["gpu.memory"].summary


def test_mixed_gpus_in_the_tp_group_fail() -> None:
    snap = load_fixture("rtx-pro-6000-maxq-x2")
    snap["gpus"][1]["name"] = "NVIDIA RTX PRO 6000 Blackwell Workstation Edition"
    snap["gpus"][1]["power_limit_max_w"] = 600
    checks = {r.id: r for r in build_report(snap).checks}
    assert checks["gpu.identical"].status == "fail"
    assert "CUDA_VISIBLE_DEVICES=" in (checks["gpu.identical"].fix or "")


def test_cuda_visible_devices_picks_the_tp_group() -> None:
    snap = load_fixture("rtx-pro-6000-server-x4")
    snap["host"]["cuda_visible_devices"] = "2,3"
    checks = {r.id: r for r in build_report(snap).checks}
    assert "GPU 2,3 here (2 visible)" in checks["gpu.count"].summary
    snap["host"]["cuda_visible_devices"] = "7"
    assert {r.id: r.status for r in build_report(snap).checks}["gpu.present"] == "fail"


def test_driver_older_than_the_cuda13_build_fails(profiles: dict[str, Profile]) -> None:
    snap = load_fixture("rtx-pro-6000-maxq-x2")
    snap["driver"] = {"version": "570.172.08", "cuda_driver": "12.8"}
    checks = {r.id: r for r in build_report(snap, profiles["maxq-x2"]).checks}
    assert checks["driver.version"].status == "fail"
    assert "R580" in checks["driver.version"].summary


def test_torch_built_for_a_newer_cuda_than_the_driver_fails(profiles: dict[str, Profile]) -> None:
    snap = load_fixture("h200-x8-nvlink")
    snap["driver"] = {"version": "580.82.07", "cuda_driver": "12.9"}
    snap["python_env"] = {"venv_python": "/data/dsv4/venv/bin/python", "python": "3.12.3", "vllm": "0.33.0",
                          "torch": "2.14.0+cu130", "torch_cuda": "13.0"}
    checks = {r.id: r for r in build_report(snap, profiles["h200-tp2"]).checks}
    assert checks["vllm.torch_cuda"].status == "fail"
    assert checks["vllm.installed"].status == "pass"


def test_sm100_only_flags_fail_on_sm12x(profiles: dict[str, Profile]) -> None:
    doc = profiles["maxq-x2"].document()
    doc["serve"]["extra_args"] = ["--moe-backend=deep_gemm_mega_moe"]
    checks = {r.id: r for r in build_report(load_fixture("rtx-pro-6000-maxq-x2"), Profile.model_validate(doc)).checks}
    assert checks["vllm.serve_args"].status == "fail"
    assert "SM100-only" in checks["vllm.serve_args"].summary


def test_profile_building_for_the_wrong_arch_fails(profiles: dict[str, Profile]) -> None:
    """B300 is SM 10.3: sm_100a binaries silently fail there."""
    snap = load_fixture("b200-x2")
    for gpu in snap["gpus"]:
        gpu["name"], gpu["compute_capability"] = "NVIDIA B300", [10, 3]
    doc = profiles["b200-x2"].document()
    doc["toolkit"]["arch"] = "sm_100a"
    doc["vllm"]["torch_arch_list"] = "10.0a"
    checks = {r.id: r for r in build_report(snap, Profile.model_validate(doc)).checks}
    assert checks["toolkit.arch"].status == "fail"
    assert "--set toolkit.arch=sm_103a" in (checks["toolkit.arch"].fix or "")


def test_disk_need_counts_what_the_workdir_already_holds(profiles: dict[str, Profile]) -> None:
    snap = load_fixture("rtx-pro-6000-maxq-x2")
    snap["host"]["disk_free_bytes"]["/data/dsv4"] = 40 * 10**9
    assert {r.id: r.status for r in build_report(snap, profiles["maxq-x2"]).checks}["host.disk_workdir"] == "fail"
    snap["host"]["workdir_contents"] = {"models_bytes": 150 * 10**9, "venv": True, "toolkit": True}
    disk = {r.id: r for r in build_report(snap, profiles["maxq-x2"]).checks}["host.disk_workdir"]
    assert disk.status == "pass"
    assert "a next venv generation 2 GB" in disk.summary  # what the next `upgrade` builds beside the venv


BROKEN: list[tuple[str, Any]] = [
    ("gpus.0.compute_capability", "12.0"),
    ("host.iommu", "maybe"),
    ("driver.cuda_driver", "13"),
    ("links.0.topology", "NVX"),
    ("gpus.0.memory_total_bytes", -1),
    ("host.shm_bytes", True),
    ("gpus", {}),
    ("schema", "dsv4setup.hardware/2"),
]


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *path, last = dotted.split(".")
    node: Any = doc
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return doc


@pytest.mark.parametrize(("where", "value"), BROKEN)
def test_schemalite_agrees_with_jsonschema_on_broken_snapshots(where: str, value: Any) -> None:
    doc = _set(load_fixture("rtx-pro-6000-maxq-x2"), where, value)
    ours = Validator(hardware_schema()).errors(doc)
    theirs = list(hardware_validator().iter_errors(doc))
    assert ours and theirs
    assert any(where.split(".")[-1] in e for e in ours)


def test_schemalite_agrees_on_missing_required_fields() -> None:
    doc = load_fixture("gb10-x1")
    del doc["host"]["iommu"]
    del doc["gpus"][0]["c2c"]
    ours = Validator(hardware_schema()).errors(doc)
    assert len(ours) == len(list(hardware_validator().iter_errors(doc))) == 2


def test_shipped_schema_uses_only_keywords_schemalite_knows() -> None:
    from dsv4setup.preflight.schemalite import ANNOTATIONS, KEYWORDS

    def walk(node: Any) -> set[str]:
        if isinstance(node, dict):
            keys = set(node)
            for key, value in node.items():
                if key in ("properties", "$defs"):
                    for sub in value.values():
                        keys |= walk(sub)
                elif isinstance(value, dict | list):
                    keys |= walk(value)
            return keys
        if isinstance(node, list):
            return set().union(*(walk(x) for x in node)) if node else set()
        return set()

    used = walk(hardware_schema()) - {"properties", "$defs"}
    assert used <= KEYWORDS | ANNOTATIONS | {"properties", "$defs"}


def test_a_snapshot_with_only_the_contract_fields_is_judged() -> None:
    """Snapshots from other tools or older versions carry only the issue's contract: no extras needed."""
    contract_host = {"hostname", "arch", "cpu_count", "ram_bytes", "shm_bytes", "os", "kernel", "python", "iommu",
                     "workdir", "disk_free_bytes"}
    contract_gpu = {"index", "name", "uuid", "pci_bus_id", "memory_total_bytes", "compute_capability",
                    "power_limit_default_w", "power_limit_max_w", "pcie", "numa_node", "nvlink_active_links", "c2c"}
    doc = load_fixture("rtx-pro-6000-maxq-x2-iommu")
    doc = {k: v for k, v in doc.items() if k in ("schema", "captured_at", "host", "driver", "gpus", "links",
                                                 "toolchain", "python_env")}
    doc["host"] = {k: v for k, v in doc["host"].items() if k in contract_host}
    doc["gpus"] = [{k: v for k, v in g.items() if k in contract_gpu} for g in doc["gpus"]]
    doc["links"] = [{k: v for k, v in x.items() if k in ("a", "b", "topology", "p2p_read", "p2p_write", "nvlink")}
                    for x in doc["links"]]
    doc["python_env"] = {"vllm": None, "torch": None, "torch_cuda": None}
    assert Validator(hardware_schema()).errors(doc) == []
    report = build_report(doc, select_profile(doc, None, use_workdir=False).judged())
    assert report.ok and report.recommendation is not None
    assert report.recommendation["env"]["NCCL_P2P_DISABLE"] == "1"
    assert {r.id: r.status for r in report.checks}["host.disk_hf_cache"] == "skip"


def test_disk_need_leaves_out_the_toolkit_when_a_suitable_nvcc_is_there(profiles: dict[str, Profile]) -> None:
    """The toolkit step's automatic route takes a machine nvcc of the same major release, minor >= wanted."""
    snap = load_fixture("rtx-pro-6000-maxq-x2")

    def disk() -> str:
        return {r.id: r for r in build_report(snap, profiles["maxq-x2"]).checks}["host.disk_workdir"].summary

    assert "CUDA toolkit 6 GB" in disk()
    snap["toolchain"]["nvcc"] = {"path": "/usr/local/cuda-13.0/bin/nvcc", "version": "13.0.88", "release": "13.0"}
    assert "CUDA toolkit" not in disk()
    snap["toolchain"]["nvcc"].update(version="12.8.93", release="12.8")  # older than the profile's 13.0.2
    assert "CUDA toolkit 6 GB" in disk()
    forced = profiles["maxq-x2"].model_copy(update={"toolkit": profiles["maxq-x2"].toolkit.model_copy(
        update={"route": "pip"})})
    snap["toolchain"]["nvcc"].update(version="13.0.88", release="13.0")
    assert "CUDA toolkit 6 GB" in {r.id: r for r in build_report(snap, forced).checks}["host.disk_workdir"].summary
