"""Where the checkpoint comes from: a hub repo, a local directory, or dsv4setup's generator."""

from __future__ import annotations

from typing import Literal

from dsv4setup.profiles.model import ModelSpec

Route = Literal["repo", "local", "generate"]


def model_route(model: ModelSpec) -> Route:
    if model.local_path:
        return "local"
    if model.generate:
        return "generate"
    return "repo"
