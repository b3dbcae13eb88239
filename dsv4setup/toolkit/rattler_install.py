"""The conda route without a conda binary: py-rattler (the conda library behind pixi) solves and
links the toolkit packages into `<workdir>/toolkit/conda`.

Used when conda is asked for (`--toolkit conda`, `toolkit.route: conda`) and no conda, mamba or
micromamba is on PATH. The channels and package specs are the ones `conda create` would get
(install.conda_channels_and_specs), so both installers produce the same prefix. Package
archives are cached in `<workdir>/toolkit/pkgs`; a second install into a prefix that already
holds the solved packages links nothing.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from dsv4setup.core.errors import StepError
from dsv4setup.core.proc import StepLog
from dsv4setup.toolkit.install import ToolkitLayout, conda_channels_and_specs, is_channel_location

if TYPE_CHECKING:
    from rattler import RepoDataRecord

RATTLER_MISSING_HINT = ("install py-rattler into the Python running dsv4setup (`pip install py-rattler`), or a conda "
                        "binary (micromamba is a single file, no sudo), or use `--toolkit pip`")


def rattler_available() -> bool:
    return importlib.util.find_spec("rattler") is not None


def channel_url(channel: str) -> str:
    """A local channel directory as the file URL rattler expects; names and URLs unchanged."""
    if "://" in channel or not is_channel_location(channel):
        return channel
    return Path(channel).expanduser().absolute().as_uri()


async def _solve(channels: list[str], specs: list[str], cache: Path) -> list[RepoDataRecord]:
    from rattler import Gateway, VirtualPackage, solve

    return await solve(sources=[channel_url(c) for c in channels], specs=specs,
                       gateway=Gateway(cache_dir=cache / "repodata"),
                       virtual_packages=VirtualPackage.detect())


async def _install(records: list[RepoDataRecord], prefix: Path, cache: Path) -> None:
    from rattler import install

    await install(records, target_prefix=prefix, cache_dir=cache, show_progress=False)


def install_rattler(layout: ToolkitLayout, version: str, channel: str, log: StepLog) -> None:
    """Solve the toolkit's specs on its channels and link the result into the conda prefix."""
    if not rattler_available():
        raise StepError("the conda route needs conda, mamba, micromamba or py-rattler, and none is available",
                        fix=RATTLER_MISSING_HINT)
    from rattler import exceptions as rx

    channels, specs = conda_channels_and_specs(version, channel)
    cache = layout.root / "pkgs"
    log.line(f"py-rattler: solving {' '.join(specs)} on {', '.join(channels)} (no conda binary on PATH)")
    try:
        records = asyncio.run(_solve(channels, specs, cache))
        log.line("py-rattler: linking " + ", ".join(f"{r.name.normalized}={r.version}" for r in records)
                 + f" into {layout.conda_prefix}")
        asyncio.run(_install(records, layout.conda_prefix, cache))
    except (rx.SolverError, rx.GatewayError, rx.FetchRepoDataError, rx.InvalidChannelError, rx.InvalidMatchSpecError,
            rx.InstallerError, rx.TransactionError, rx.LinkError, rx.ExtractError, rx.IoError, rx.CacheDirError,
            rx.DetectVirtualPackageError, OSError) as exc:
        log.line(f"py-rattler failed: {type(exc).__name__}: {exc}")
        raise StepError(f"py-rattler could not install CUDA {version} from {', '.join(channels)}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
                        fix=f"check that the channel holds CUDA {version} and is reachable; see {log.path}; "
                             f"or use `--toolkit pip`") from None
