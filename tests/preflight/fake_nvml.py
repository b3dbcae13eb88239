"""A fake `pynvml` module built from a JSON fixture, for probing without a GPU.

Only NVML itself is fake: every function the probe calls answers from the fixture, and a value
spelled "NVMLError_<Name>" raises that exception class of the REAL pynvml module, so the probe's
`except nvml.NVMLError` clauses are exercised with the real exception hierarchy. `calls` records
each call by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pynvml

FIXTURES = Path(__file__).parent / "fixtures" / "nvml"


def _answer(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("NVMLError_"):
        raise getattr(pynvml, value)()
    return value


class FakeNvml(ModuleType):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__("pynvml")
        self.spec = spec
        self.calls: list[str] = []
        self.NVMLError = pynvml.NVMLError
        self.NVML_NVLINK_MAX_LINKS = spec.get("max_links", 18)
        self.NVML_FEATURE_ENABLED = pynvml.NVML_FEATURE_ENABLED
        for name in spec.get("missing_functions", []):
            setattr(self, name, None)  # `getattr(module, name, None)` is None: not in this nvidia-ml-py

    def _gpu(self, handle: int) -> dict[str, Any]:
        return self.spec["gpus"][handle]

    def _field(self, name: str, handle: int, key: str) -> Any:
        self.calls.append(name)
        return _answer(self._gpu(handle)[key])

    def _pair(self, table: str, a: int, b: int) -> Any:
        key = f"{min(a, b)}-{max(a, b)}"
        return self.spec[table][key]

    # --- system ---
    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        _answer(self.spec.get("init", None))

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")

    def nvmlSystemGetDriverVersion(self) -> str:
        self.calls.append("nvmlSystemGetDriverVersion")
        return _answer(self.spec["driver_version"])

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self.calls.append("nvmlSystemGetCudaDriverVersion")
        return _answer(self.spec["cuda_driver_version"])

    def nvmlDeviceGetCount(self) -> int:
        self.calls.append("nvmlDeviceGetCount")
        return len(self.spec["gpus"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self.calls.append("nvmlDeviceGetHandleByIndex")
        _answer(self._gpu(index).get("handle"))
        return index

    # --- per GPU ---
    def nvmlDeviceGetName(self, h: int) -> str:
        return self._field("nvmlDeviceGetName", h, "name")

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._field("nvmlDeviceGetUUID", h, "uuid")

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(busId=self._field("nvmlDeviceGetPciInfo", h, "bus_id").encode())

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        total = self._field("nvmlDeviceGetMemoryInfo", h, "memory_total")
        return SimpleNamespace(total=total, free=total, used=0)

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return tuple(self._field("nvmlDeviceGetCudaComputeCapability", h, "cc"))  # type: ignore[return-value]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: int) -> int:
        return self._field("nvmlDeviceGetPowerManagementDefaultLimit", h, "power_default_mw")

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> list[int]:
        return self._field("nvmlDeviceGetPowerManagementLimitConstraints", h, "power_constraints_mw")

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: int) -> int:
        return self._field("nvmlDeviceGetMaxPcieLinkGeneration", h, "pcie_gen_max")

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: int) -> int:
        return self._field("nvmlDeviceGetMaxPcieLinkWidth", h, "pcie_width_max")

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: int) -> int:
        return self._field("nvmlDeviceGetCurrPcieLinkGeneration", h, "pcie_gen_current")

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: int) -> int:
        return self._field("nvmlDeviceGetCurrPcieLinkWidth", h, "pcie_width_current")

    def nvmlDeviceGetNumaNodeId(self, h: int) -> int:
        return self._field("nvmlDeviceGetNumaNodeId", h, "numa")

    def nvmlDeviceGetC2cModeInfoV(self, h: int) -> Any:
        return SimpleNamespace(isC2cEnabled=self._field("nvmlDeviceGetC2cModeInfoV", h, "c2c"))

    def _link(self, h: int, link: int) -> dict[str, Any]:
        links = _answer(self._gpu(h)["nvlinks"])
        if link >= len(links):
            raise pynvml.NVMLError_InvalidArgument()
        return links[link]

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        self.calls.append("nvmlDeviceGetNvLinkState")
        return self._link(h, link)["state"]

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: int, link: int) -> Any:
        self.calls.append("nvmlDeviceGetNvLinkRemotePciInfo")
        return SimpleNamespace(busId=self._link(h, link)["remote_bus"])

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: int, link: int) -> int:
        self.calls.append("nvmlDeviceGetNvLinkRemoteDeviceType")
        return self._link(h, link)["remote_type"]

    # --- per pair ---
    def nvmlDeviceGetTopologyCommonAncestor(self, a: int, b: int) -> int:
        self.calls.append("nvmlDeviceGetTopologyCommonAncestor")
        return _answer(self._pair("topology", a, b))

    def nvmlDeviceGetP2PStatus(self, a: int, b: int, index: int) -> int:
        self.calls.append("nvmlDeviceGetP2PStatus")
        if not isinstance(index, int):  # the real ctypes call rejects pynvml's tuple-valued READ constant
            raise TypeError(f"p2p index must be an int, got {index!r}")
        return _answer(self._pair("p2p", a, b)[str(index)])


def load_fake(name: str, **changes: Any) -> FakeNvml:
    """The fake NVML of fixtures/nvml/<name>.json, with top-level keys replaced by `changes`."""
    spec = json.loads((FIXTURES / f"{name}.json").read_text())
    spec.update(changes)
    return FakeNvml(spec)
