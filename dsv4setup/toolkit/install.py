"""Installing a CUDA toolkit without sudo: a conda prefix or a pip venv inside the workdir.

Layout under `<workdir>/toolkit/`: `conda/` (the conda prefix) and `venv/` (the pip venv,
nvcc under `site-packages/nvidia/cu<MAJOR>/bin/`). Both routes pin every component to one
release: a newer nvvm next to an older ptxas fails (`Unsupported .version 9.5`).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dsv4setup.core.errors import UsageError
from dsv4setup.core.proc import StepLog, run_logged
from dsv4setup.hardware.arch import parse_release
from dsv4setup.toolkit.nvcc import HostTools
from dsv4setup.vllm.installer import Installer

Route = Literal["pip", "conda"]
CondaChannel = str  # "nvidia", "conda-forge", or a mirror given by URL or local directory
CONDA_NAMES = ("conda", "mamba", "micromamba")
PIP_EXTRAS = "nvcc,nvvm,cudart,crt,cccl"


@dataclass(frozen=True)
class ToolkitLayout:
    root: Path

    @property
    def conda_prefix(self) -> Path:
        return self.root / "conda"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    def pip_nvcc(self) -> Path | None:
        """nvcc inside the pip venv: nvidia/cu13/bin for 13.x wheels, nvidia/cuda_nvcc/bin for 12.x."""
        found = sorted(self.venv.glob("lib/python*/site-packages/nvidia/*/bin/nvcc"))
        return found[0] if found else None

    def conda_nvcc(self) -> Path | None:
        nvcc = self.conda_prefix / "bin" / "nvcc"
        return nvcc if nvcc.is_file() else None

    def nvcc(self, route: Route) -> Path | None:
        return self.pip_nvcc() if route == "pip" else self.conda_nvcc()

    def holds_release(self, route: Route, version: str, channel: CondaChannel = "nvidia") -> bool:
        """The install's own package records name this release (nvcc reports only MAJOR.MINOR).

        conda-forge (or a mirror) pins only MAJOR.MINOR (through cuda-version), so that is all it can prove.
        """
        if route == "pip":
            return any(self.venv.glob(f"lib/python*/site-packages/cuda_toolkit-{version}.dist-info"))
        meta = self.conda_prefix / "conda-meta"
        if channel == "nvidia":
            return any(meta.glob(f"cuda-toolkit-{version}-*.json"))
        major, minor = parse_release(version)
        return any(meta.glob(f"cuda-version-{major}.{minor}-*.json"))


def find_conda(host: HostTools) -> Path | None:
    """The first of conda, mamba, micromamba on the search path."""
    for name in CONDA_NAMES:
        if found := host.which(name):
            return found
    return None


def requested_route(option: str | None, profile_route: str) -> Route | None:
    """The route the user forced (`--toolkit` wins over the profile), or None for automatic."""
    forced = option or (None if profile_route == "auto" else profile_route)
    if forced not in (None, "pip", "conda"):
        raise UsageError(f"toolkit route {forced!r}: expected pip or conda")
    return forced  # type: ignore[return-value]


def choose_route(forced: Route | None, conda: Path | None) -> Route:
    """Automatic choice: conda when one is installed (what conda users expect), pip otherwise."""
    if forced is not None:
        return forced
    return "conda" if conda is not None else "pip"


def is_channel_location(channel: str) -> bool:
    """A channel given by URL or local directory (a mirror) rather than by name."""
    return "://" in channel or channel.startswith(("/", "~", "."))


def conda_channels_and_specs(version: str, channel: CondaChannel = "nvidia") -> tuple[list[str], list[str]]:
    """The channels and package specs of one toolkit release, every component from that release only.

    NVIDIA's per-release label channel holds exactly one release; conda-forge supplies the
    non-CUDA dependencies such as libgcc. conda-forge (and a mirror given by URL or directory)
    versions cuda-nvcc by component (13.0.88), not by release, so there the release is pinned
    through the `cuda-version` constraint package, which both ecosystems honour.
    """
    major, minor = parse_release(version)
    pin = f"cuda-version={major}.{minor}"
    if channel == "nvidia":
        return [f"nvidia/label/cuda-{version}", "conda-forge"], [f"cuda-toolkit={version}", pin]
    return [channel], ["cuda-nvcc", "cuda-cudart-dev", pin]


def conda_create_argv(conda: Path, prefix: Path, version: str, channel: CondaChannel = "nvidia") -> list[str]:
    """`conda create` for one toolkit release (see conda_channels_and_specs).

    With NVIDIA's label channel the configured channels stay on (they supply libgcc and co.);
    any other channel is the only one used.
    """
    channels, specs = conda_channels_and_specs(version, channel)
    if channel == "nvidia":
        args = ["-c", channels[0], specs[0]]
    else:
        args = ["--override-channels", "-c", channels[0], *specs[:-1]]
    return [str(conda), "create", "-y", "-p", str(prefix), *args, specs[-1]]


def pip_requirement(version: str) -> str:
    return f"cuda-toolkit[{PIP_EXTRAS}]=={version}"


def install_conda(conda: Path, layout: ToolkitLayout, version: str, channel: CondaChannel,
                  log: StepLog) -> None:
    prefix = layout.conda_prefix
    if prefix.exists():  # ours alone: conda/micromamba disagree on how to `create` over an existing prefix
        log.line(f"removing the previous toolkit prefix {prefix}")
        shutil.rmtree(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    run_logged(conda_create_argv(conda, prefix, version, channel), log, what=f"{conda.name} create {prefix}",
               fix=f"check that the channel holds CUDA {version} (channel {channel}) and that conda can reach it; "
                    f"or force the pip route with `--toolkit pip`")


def install_pip(layout: ToolkitLayout, version: str, log: StepLog, installer: Installer,
                report: Callable[[str], None] | None = None) -> None:
    """NVIDIA's PyPI toolkit wheels into a venv, through uv (or pip, the fallback route)."""
    venv_python = installer.create_venv(Path(sys.executable), layout.venv, log)
    installer.install(venv_python, [pip_requirement(version)], None, log, report=report)
