"""The NVML probe without a GPU: a fake `pynvml` (see fake_nvml.py) raising the real pynvml exceptions."""

from __future__ import annotations

from pathlib import Path

import pynvml

from dsv4setup.core.workdir import Workdir
from dsv4setup.preflight.nvml import probe_nvml
from dsv4setup.preflight.snapshot import snapshot_errors, take_snapshot
from tests.preflight.conftest import hardware_validator
from tests.preflight.fake_nvml import load_fake


def test_two_pcie_gpus_with_fake_nvml() -> None:
    fake = load_fake("maxq-x2")
    facts = probe_nvml(fake)
    assert facts.nvml_error is None
    assert facts.driver == {"version": "580.126.09", "cuda_driver": "13.0"}
    assert [g["index"] for g in facts.gpus] == [0, 1]
    gpu = facts.gpus[0]
    assert gpu["name"] == "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition"
    assert gpu["pci_bus_id"] == "00000000:18:00.0"  # bytes from NVML decoded
    assert gpu["memory_total_bytes"] == 97887 * 2**20
    assert gpu["compute_capability"] == [12, 0]
    assert (gpu["power_limit_default_w"], gpu["power_limit_max_w"]) == (300, 300)  # Max-Q: 300 W
    assert gpu["pcie"] == {"gen_max": 5, "width_max": 16, "gen_current": 1, "width_current": 16}
    assert gpu["nvlink_active_links"] == 0 and gpu["c2c"] is False
    assert facts.links == [{"a": 0, "b": 1, "topology": "NODE", "pcie_topology": "NODE", "p2p_read": "ok",
                            "p2p_write": "ok", "p2p_nvlink": "not_supported", "nvlink": 0}]
    assert fake.calls[0] == "nvmlInit" and fake.calls[-1] == "nvmlShutdown"


def test_not_supported_fields_become_null_with_fake_nvml() -> None:
    facts = probe_nvml(load_fake("gb10"))
    gpu = facts.gpus[0]
    assert gpu["name"] == "NVIDIA GB10" and gpu["compute_capability"] == [12, 1]
    assert gpu["memory_total_bytes"] is None  # unified memory: NVML has no framebuffer size
    assert gpu["power_limit_default_w"] is None and gpu["power_limit_max_w"] is None
    assert gpu["pcie"] == {"gen_max": None, "width_max": None, "gen_current": None, "width_current": None}
    assert gpu["numa_node"] is None and gpu["c2c"] is True
    assert "gpu0.memory_total_bytes: NVMLError_NotSupported: Not Supported" in facts.notes
    assert facts.links == []


def test_library_not_found_is_a_normal_result_with_fake_nvml() -> None:
    fake = load_fake("maxq-x2", init="NVMLError_LibraryNotFound")
    facts = probe_nvml(fake)
    assert facts.driver is None and facts.gpus == [] and facts.links == []
    assert facts.nvml_error == "NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    assert fake.calls == ["nvmlInit"]  # nothing else attempted, no shutdown of what never started


def test_driver_not_loaded_with_fake_nvml() -> None:
    facts = probe_nvml(load_fake("maxq-x2", init="NVMLError_DriverNotLoaded"))
    assert facts.driver is None and facts.nvml_error == "NVMLError_DriverNotLoaded: Driver Not Loaded"


def test_nvswitch_links_count_as_nvlink_with_fake_nvml() -> None:
    facts = probe_nvml(load_fake("h200-nvswitch-x2"))
    assert [g["nvlink_active_links"] for g in facts.gpus] == [18, 18]
    link = facts.links[0]
    assert (link["topology"], link["pcie_topology"], link["nvlink"], link["p2p_nvlink"]) == ("NV18", "SYS", 18, "ok")


def test_direct_nvlinks_are_counted_per_pair_with_fake_nvml() -> None:
    """Four active links from GPU 0 end at GPU 1's bus id (spelled with a 4-digit domain there)."""
    facts = probe_nvml(load_fake("nvlink-bridge-x2"))
    assert [g["nvlink_active_links"] for g in facts.gpus] == [4, 4]
    assert facts.links[0]["topology"] == "NV4" and facts.links[0]["pcie_topology"] == "PXB"
    assert facts.driver == {"version": "575.57.08", "cuda_driver": "12.9"}


def test_lost_gpu_is_listed_with_unknown_facts_with_fake_nvml() -> None:
    fake = load_fake("maxq-x2")
    fake.spec["gpus"][1]["handle"] = "NVMLError_GpuIsLost"
    facts = probe_nvml(fake)
    assert [g["name"] for g in facts.gpus] == ["NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", None]
    assert facts.links == []  # no pair with a GPU that cannot be opened
    assert any(n.startswith("gpu1.handle: NVMLError_GpuIsLost") for n in facts.notes)


def test_functions_missing_from_an_old_nvidia_ml_py_give_null_with_fake_nvml() -> None:
    fake = load_fake("maxq-x2", missing_functions=["nvmlDeviceGetNumaNodeId", "nvmlDeviceGetC2cModeInfoV",
                                                   "nvmlDeviceGetNvLinkState"])
    facts = probe_nvml(fake)
    assert facts.gpus[0]["numa_node"] is None and facts.gpus[0]["c2c"] is False
    assert facts.gpus[0]["nvlink_active_links"] == 0
    assert "gpu0.numa_node: nvmlDeviceGetNumaNodeId is not in this nvidia-ml-py" in facts.notes


def test_pair_calls_failing_give_unknown_with_fake_nvml() -> None:
    fake = load_fake("maxq-x2", topology={"0-1": "NVMLError_NotSupported"},
                     p2p={"0-1": {"0": "NVMLError_Unknown", "1": 4, "2": 5}})
    link = probe_nvml(fake).links[0]
    assert (link["topology"], link["p2p_read"], link["p2p_write"]) == ("unknown", "unknown", "disabled")


def test_the_probe_uses_the_real_pynvml_exception_classes() -> None:
    """The fake raises pynvml's own classes, so `except nvml.NVMLError` is the real clause."""
    assert issubclass(pynvml.NVMLError_NotSupported, pynvml.NVMLError)
    assert load_fake("gb10").NVMLError is pynvml.NVMLError


def test_snapshot_with_fake_nvml_is_valid(tmp_path: Path) -> None:
    for name in ("maxq-x2", "gb10", "h200-nvswitch-x2"):
        snap = take_snapshot(Workdir(tmp_path / "wd"), nvml=load_fake(name))
        assert list(hardware_validator().iter_errors(snap)) == []
        assert snapshot_errors(snap) == []
        assert snap["gpus"] and snap["driver"]["cuda_driver"] == "13.0"
        assert "nvml_error" not in snap


def test_snapshot_of_this_machine_is_valid(tmp_path: Path) -> None:
    """The real probe here (no GPU, maybe no libnvidia-ml): still a complete, valid document."""
    snap = take_snapshot(Workdir(tmp_path / "missing" / "wd"))
    assert list(hardware_validator().iter_errors(snap)) == []
    host = snap["host"]
    assert host["workdir"] == str(tmp_path / "missing" / "wd")
    assert host["disk_free_bytes"][host["workdir"]] > 0  # measured at the nearest existing ancestor
    assert host["iommu"] in ("off", "passthrough", "translated", "unknown")
    assert snap["python_env"]["vllm"] is None  # no venv in a fresh workdir
    if snap["driver"] is None:
        assert snap["gpus"] == [] and snap["nvml_error"]


def test_every_nvml_function_the_probe_names_exists_in_the_real_pynvml() -> None:
    """The fake cannot catch a misspelt NVML function; the real module can."""
    import re

    import dsv4setup.preflight.nvml as probe

    source = Path(probe.__file__).read_text()
    names = set(re.findall(r"\bnvml(?:Init|Shutdown|System\w+|Device\w+)\b", source))
    assert len(names) >= 20
    assert sorted(n for n in names if not callable(getattr(pynvml, n, None))) == []
    fake = load_fake("h200-nvswitch-x2")
    facts = probe_nvml(fake)
    assert not [n for n in facts.notes if "is not in this nvidia-ml-py" in n]  # the fake has them all
    assert names >= set(fake.calls)
