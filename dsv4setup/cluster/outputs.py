"""What the cluster step records (validated by the engine before saving)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from dsv4setup.core.outputs import StepOutputs


class ClusterNode(BaseModel):
    """This machine's node of the multi-node profile."""

    model_config = ConfigDict(extra="forbid")

    name: str
    role: Literal["head", "worker"]
    address: str | None
    interface: str | None
    gpus: int
    index: int


class ClusterOutputs(StepOutputs):
    step = "cluster"

    node: ClusterNode
    ray_pid: int
    ray_address: str  # the head's Ray, host:port
    address: str  # this node's address on the inter-node link
    nodes: dict[str, dict[str, Any]]  # by name: address, resources (and on the head: vllm, patches, hostname)
    fingerprint: dict[str, Any]  # this node's deployment fingerprint (cluster/fingerprint.py)
