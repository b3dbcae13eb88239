"""Every GPU profile's install, resolved for real: pip's own resolver on real PyPI data, for the
profile's own platform (x86_64 or aarch64, manylinux, CPython 3.12, dependency markers evaluated
for that platform: vllm.pip_target), without downloading the multi-GB CUDA wheels
(`pip install --dry-run --report`).

The requirements are the ones the steps install (vllm.routes.wheel_requirements,
toolkit.install.pip_requirement), with the same constraints. The index is PyPI behind a loopback caching mirror
(pypi_mirror.py; the machine's pip config, with its local wheel directories, is ignored), so
warm runs need no network. The resolver is a current pip (PEP 658 metadata; the pip 23 of
Python 3.11 downloads every wheel to read its metadata) in a venv kept in the test cache.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from dsv4setup.hardware.arch import parse_release
from dsv4setup.profiles.loader import load_profile_file, shipped_profile_files
from dsv4setup.profiles.model import Profile
from dsv4setup.toolkit.install import pip_requirement
from dsv4setup.vllm.build import constraints_text
from dsv4setup.vllm.pip_target import pip_argv, target_args
from dsv4setup.vllm.routes import wheel_requirements
from tests.vllm.pypi_mirror import Mirror, pypi_mirror

pytestmark = pytest.mark.slow

PYTHON = "3.12"
RESOLVER_PIP = "pip>=25.1"
GPU_PROFILES = [p for p in map(load_profile_file, shipped_profile_files()) if not p.match.cpu_only]


def machine(profile: Profile) -> str:
    """The profile's CPU architecture; profiles that match any take the common x86_64 box."""
    return profile.match.arch if profile.match.arch in ("x86_64", "aarch64") else "x86_64"


@pytest.fixture(scope="module")
def resolver(test_cache: Path) -> Path:
    """A venv with a current pip, created once per test cache."""
    venv = test_cache / "pip-resolver"
    python = venv / "bin" / "python"
    if not python.exists():
        building = test_cache / f"pip-resolver.{os.getpid()}"
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q", RESOLVER_PIP], check=True)
        building.replace(venv)  # venvs are relocatable enough for `python -m pip`
    return python


@pytest.fixture(scope="module")
def mirror(test_cache: Path) -> Iterator[Mirror]:
    with pypi_mirror(test_cache / "pypi-mirror") as served:
        yield served


@functools.cache
def _resolve(python: Path, index: str, args: tuple[str, ...], arch: str, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "report.json"
    command, *rest = args
    argv = pip_argv(str(python), PYTHON, arch, [
        command, "--isolated", "--dry-run", "--report", str(report), "--ignore-installed", *target_args(PYTHON, arch),
        "--target", str(workdir / "target"), "--index-url", index, "--trusted-host", "127.0.0.1",
        "--disable-pip-version-check", *rest])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, f"pip could not resolve {' '.join(rest)} for {arch}:\n{proc.stdout[-3000:]}" \
                                 f"\n{proc.stderr[-3000:]}"
    return json.loads(report.read_text())


def resolve(resolver: Path, mirror: Mirror, args: list[str], arch: str, tmp: Path) -> dict[str, Any]:
    """pip's report for `pip ARGS` on `arch` (one resolution per distinct argv and platform)."""
    key = re.sub(r"[^\w.-]+", "_", f"{arch}-{'-'.join(args)}")[:120]
    return _resolve(resolver, f"{mirror.base}/simple/", tuple(args), arch, tmp / key)


@pytest.fixture(scope="module")
def resolve_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resolve")


def resolved(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> the metadata pip would install."""
    items = [item["metadata"] for item in report["install"]]
    names = [canonicalize_name(m["name"]) for m in items]
    assert len(names) == len(set(names)), "one package resolved twice"
    return dict(zip(names, items, strict=True))


def unmet_requirements(packages: dict[str, dict[str, Any]], arch: str) -> list[str]:
    """An independent conflict check: each resolved package's unconditional requirements on this
    platform, held against the resolved versions."""
    env = {"python_version": PYTHON, "python_full_version": f"{PYTHON}.0", "platform_machine": arch,
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    unmet = []
    for name, meta in packages.items():
        for text in meta.get("requires_dist", []):
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            found = packages.get(canonicalize_name(req.name))
            if found is None or not req.specifier.contains(found["version"], prereleases=True):
                unmet.append(f"{name} needs {text}, resolved {found['version'] if found else 'nothing'}")
    return unmet


_CU_SUFFIX = re.compile(r"^nvidia-.+-cu(\d+)$")
_CUDA_MAJOR_PINS = ("cuda-toolkit", "nvidia-cuda-runtime")


def cuda_majors(meta: dict[str, Any], arch: str) -> set[int]:
    """The CUDA major releases a wheel's Linux requirements name (nvidia-*-cuNN, cuda-toolkit==N.*)."""
    majors: set[int] = set()
    for text in meta.get("requires_dist", []):
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"platform_machine": arch, "sys_platform": "linux",
                                                               "platform_system": "Linux", "extra": "",
                                                               "python_version": PYTHON}):
            continue
        name = canonicalize_name(req.name)
        if m := _CU_SUFFIX.match(name):
            majors.add(int(m.group(1)))
        elif name in _CUDA_MAJOR_PINS:
            majors.update(Version(spec.version).major for spec in req.specifier if spec.operator == "==")
    return majors


@pytest.mark.parametrize("profile", GPU_PROFILES, ids=lambda p: f"{p.name}-{machine(p)}")
def test_vllm_route_resolves_on_real_pypi_for_the_profile_platform(profile: Profile, resolver: Path,
                                                                     mirror: Mirror, resolve_dir: Path) -> None:
    spec, arch = profile.vllm, machine(profile)
    assert spec.source == "wheel", f"{profile.name}: only the wheel route resolves without building"
    constraints = None
    if spec.pip_constraints:
        constraints = resolve_dir / f"{profile.name}-constraints.txt"
        constraints.write_text(constraints_text(spec.pip_constraints))
    pip_args = ["install", *(["-c", str(constraints)] if constraints else []), *wheel_requirements(spec)]
    packages = resolved(resolve(resolver, mirror, pip_args, arch, resolve_dir))
    assert packages[canonicalize_name(spec.package)]["version"] == spec.version
    torch = packages["torch"]
    assert "+" not in torch["version"], f"torch {torch['version']} is a local (CPU/ROCm) build"
    toolkit_major = parse_release(str(profile.toolkit.version))[0]
    assert cuda_majors(torch, arch) == {toolkit_major}, \
        f"torch {torch['version']} for {arch} is built for CUDA {cuda_majors(torch, arch)}, " \
        f"the profile's toolkit is CUDA {profile.toolkit.version}"
    assert unmet_requirements(packages, arch) == []


@pytest.mark.parametrize("profile", GPU_PROFILES, ids=lambda p: f"{p.name}-{machine(p)}")
def test_pip_toolkit_route_resolves_on_real_pypi_for_the_profile_platform(profile: Profile, resolver: Path,
                                                                            mirror: Mirror, resolve_dir: Path) -> None:
    version, arch = str(profile.toolkit.version), machine(profile)
    packages = resolved(resolve(resolver, mirror, ["install", pip_requirement(version)], arch, resolve_dir))
    assert packages["cuda-toolkit"]["version"] == version
    major, minor = parse_release(version)
    release = f"{major}.{minor}"
    for component in ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-runtime", "nvidia-cuda-crt"):
        assert packages[component]["version"].startswith(release + "."), \
            f"{component} {packages[component]['version']} is not from CUDA {release}"
    assert unmet_requirements(packages, arch) == []
