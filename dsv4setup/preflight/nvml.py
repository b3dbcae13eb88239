"""GPU facts through NVML (nvidia-ml-py, imported as `pynvml`).

Every NVML call may raise: a GB10 has no framebuffer size, a PCIe board has no NVLink, an old
driver lacks a function. Each such call is recorded as None (and a note), never a crash. No
driver at all is a normal result: `driver=None, gpus=[]` and `nvml_error` says why.

The NVML module is injectable (`probe_nvml(nvml=...)`): tests drive the probe with a fake
module that raises the real pynvml exception classes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

# nvmlGpuTopologyLevel_t -> the labels of `nvidia-smi topo -m`
TOPOLOGY_LABELS = {0: "PIX", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
# nvmlGpuP2PStatus_t -> snapshot words
P2P_STATUS = {0: "ok", 1: "not_supported", 2: "not_supported", 3: "not_supported", 4: "disabled",
              5: "not_supported", 6: "unknown"}
# nvmlGpuP2PCapsIndex_t values. pynvml spells NVML_P2P_CAPS_INDEX_READ as `0,` (a tuple),
# which ctypes rejects, so the stable C enum values are used directly.
P2P_READ, P2P_WRITE, P2P_NVLINK = 0, 1, 2
NVLINK_REMOTE_SWITCH = 2  # NVML_NVLINK_DEVICE_TYPE_SWITCH
NVLINK_MAX_LINKS_DEFAULT = 18


@dataclass
class NvmlFacts:
    """The NVML part of a hardware snapshot."""

    driver: dict[str, str | None] | None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    nvml_error: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _NvLink:
    link: int
    remote_bus_id: str | None
    remote_type: int | None


def describe_error(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # str() of an NVMLError may call into the library itself
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _norm_bus_id(bus_id: str | None) -> str | None:
    """NVML spells the PCI domain with 8 or 4 hex digits depending on the call: normalise to 4."""
    if not bus_id:
        return None
    parts = bus_id.lower().split(":")
    if len(parts) == 3:
        try:
            return f"{int(parts[0], 16):04x}:{parts[1]}:{parts[2]}"
        except ValueError:
            pass
    return bus_id.lower()


class _Reader:
    """Calls NVML functions by name; an unsupported call or a missing function gives None."""

    def __init__(self, nvml: ModuleType, notes: list[str]) -> None:
        self.nvml = nvml
        self.notes = notes

    def __call__(self, what: str, function: str, *args: Any) -> Any:
        fn = getattr(self.nvml, function, None)
        if fn is None:
            self.notes.append(f"{what}: {function} is not in this nvidia-ml-py")
            return None
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            self.notes.append(f"{what}: {describe_error(exc)}")
            return None


def _cuda_version(raw: int | None) -> str | None:
    """NVML's CUDA driver version integer (13000) as "13.0"."""
    if raw is None:
        return None
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def _nvlinks(nvml: ModuleType, handle: Any) -> list[_NvLink]:
    """The active NVLink links of one GPU. PCIe boards answer NotSupported on link 0: no links."""
    max_links = getattr(nvml, "NVML_NVLINK_MAX_LINKS", NVLINK_MAX_LINKS_DEFAULT)
    enabled = getattr(nvml, "NVML_FEATURE_ENABLED", 1)
    state = getattr(nvml, "nvmlDeviceGetNvLinkState", None)
    remote_pci = getattr(nvml, "nvmlDeviceGetNvLinkRemotePciInfo", None)
    remote_kind = getattr(nvml, "nvmlDeviceGetNvLinkRemoteDeviceType", None)
    links: list[_NvLink] = []
    if state is None:
        return links
    for link in range(max_links):
        try:
            if state(handle, link) != enabled:
                continue
        except nvml.NVMLError:
            break  # NotSupported (no NVLink) or InvalidArgument (past the last link)
        remote: str | None = None
        remote_type: int | None = None
        with contextlib.suppress(nvml.NVMLError):
            remote = _text(remote_pci(handle, link).busId) if remote_pci is not None else None
        with contextlib.suppress(nvml.NVMLError):
            remote_type = int(remote_kind(handle, link)) if remote_kind is not None else None
        links.append(_NvLink(link, _norm_bus_id(remote), remote_type))
    return links


def _gpu(read: _Reader, index: int, handle: Any, nvlinks: list[_NvLink]) -> dict[str, Any]:
    tag = f"gpu{index}"
    pci = read(f"{tag}.pci_bus_id", "nvmlDeviceGetPciInfo", handle)
    memory = read(f"{tag}.memory_total_bytes", "nvmlDeviceGetMemoryInfo", handle)
    cc = read(f"{tag}.compute_capability", "nvmlDeviceGetCudaComputeCapability", handle)
    power_default = read(f"{tag}.power_limit_default_w", "nvmlDeviceGetPowerManagementDefaultLimit", handle)
    constraints = read(f"{tag}.power_limit_max_w", "nvmlDeviceGetPowerManagementLimitConstraints", handle)
    numa = read(f"{tag}.numa_node", "nvmlDeviceGetNumaNodeId", handle)
    c2c = read(f"{tag}.c2c", "nvmlDeviceGetC2cModeInfoV", handle)
    return {
        "index": index,
        "name": _text(read(f"{tag}.name", "nvmlDeviceGetName", handle)),
        "uuid": _text(read(f"{tag}.uuid", "nvmlDeviceGetUUID", handle)),
        "pci_bus_id": _text(pci.busId) if pci is not None else None,
        "memory_total_bytes": int(memory.total) if memory is not None else None,
        "compute_capability": [int(cc[0]), int(cc[1])] if cc is not None else None,
        "power_limit_default_w": round(power_default / 1000) if power_default is not None else None,
        "power_limit_max_w": round(constraints[1] / 1000) if constraints is not None else None,
        "pcie": {
            "gen_max": read(f"{tag}.pcie.gen_max", "nvmlDeviceGetMaxPcieLinkGeneration", handle),
            "width_max": read(f"{tag}.pcie.width_max", "nvmlDeviceGetMaxPcieLinkWidth", handle),
            "gen_current": read(f"{tag}.pcie.gen_current", "nvmlDeviceGetCurrPcieLinkGeneration", handle),
            "width_current": read(f"{tag}.pcie.width_current", "nvmlDeviceGetCurrPcieLinkWidth", handle),
        },
        "numa_node": int(numa) if numa is not None and numa >= 0 else None,
        "nvlink_active_links": len(nvlinks),
        "c2c": bool(getattr(c2c, "isC2cEnabled", 0)) if c2c is not None else False,
    }


def _pair_nvlinks(a: list[_NvLink], p2p_nvlink: str, bus_b: str | None) -> int:
    """Links from GPU a to GPU b: direct ones, else (through NVSwitch) all of a's switch links."""
    direct = sum(1 for link in a if bus_b is not None and link.remote_bus_id == bus_b)
    if direct:
        return direct
    if p2p_nvlink == "ok":
        return sum(1 for link in a if link.remote_type == NVLINK_REMOTE_SWITCH)
    return 0


def _links(read: _Reader, handles: list[Any], gpus: list[dict[str, Any]],
           nvlinks: list[list[_NvLink]]) -> list[dict[str, Any]]:
    pairs: list[dict[str, Any]] = []
    for a in range(len(handles)):
        for b in range(a + 1, len(handles)):
            ha, hb = handles[a], handles[b]
            if ha is None or hb is None:
                continue
            tag = f"link{a}-{b}"

            def p2p(index: int, what: str, ha: Any = ha, hb: Any = hb, tag: str = tag) -> str:
                status = read(f"{tag}.{what}", "nvmlDeviceGetP2PStatus", ha, hb, index)
                return P2P_STATUS.get(status, "unknown") if status is not None else "unknown"

            level = read(f"{tag}.topology", "nvmlDeviceGetTopologyCommonAncestor", ha, hb)
            pcie_topology = TOPOLOGY_LABELS.get(level, "unknown") if level is not None else "unknown"
            p2p_nvlink = p2p(P2P_NVLINK, "p2p_nvlink")
            count = _pair_nvlinks(nvlinks[a], p2p_nvlink, _norm_bus_id(gpus[b]["pci_bus_id"]))
            pairs.append({
                "a": a, "b": b,
                "topology": f"NV{count}" if count else pcie_topology,
                "pcie_topology": pcie_topology,
                "p2p_read": p2p(P2P_READ, "p2p_read"),
                "p2p_write": p2p(P2P_WRITE, "p2p_write"),
                "p2p_nvlink": p2p_nvlink,
                "nvlink": count,
            })
    return pairs


def probe_nvml(nvml: ModuleType | None = None) -> NvmlFacts:
    """Read driver, GPUs and GPU pairs. Never raises for anything NVML reports."""
    if nvml is None:
        try:
            import pynvml  # lazy: only the live probe needs it
        except ImportError as exc:
            return NvmlFacts(driver=None, nvml_error=f"nvidia-ml-py (pynvml) is not importable: {exc}")
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return NvmlFacts(driver=None, nvml_error=describe_error(exc))
    notes: list[str] = []
    read = _Reader(nvml, notes)
    try:
        driver = {
            "version": _text(read("driver.version", "nvmlSystemGetDriverVersion")),
            "cuda_driver": _cuda_version(read("driver.cuda_driver", "nvmlSystemGetCudaDriverVersion")),
        }
        count = read("gpu count", "nvmlDeviceGetCount") or 0
        handles = [read(f"gpu{i}.handle", "nvmlDeviceGetHandleByIndex", i) for i in range(count)]
        nvlinks = [_nvlinks(nvml, h) if h is not None else [] for h in handles]
        gpus = [_gpu(read, i, h, nvlinks[i]) if h is not None else _lost_gpu(i) for i, h in enumerate(handles)]
        links = _links(read, handles, gpus, nvlinks)
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError as exc:
            notes.append(f"shutdown: {describe_error(exc)}")
    return NvmlFacts(driver=driver, gpus=gpus, links=links, notes=notes)


def _lost_gpu(index: int) -> dict[str, Any]:
    """A GPU NVML counts but cannot open (lost, no permission): present, every fact unknown."""
    return {"index": index, "name": None, "uuid": None, "pci_bus_id": None, "memory_total_bytes": None,
            "compute_capability": None, "power_limit_default_w": None, "power_limit_max_w": None,
            "pcie": {"gen_max": None, "width_max": None, "gen_current": None, "width_current": None},
            "numa_node": None, "nvlink_active_links": 0, "c2c": False}
