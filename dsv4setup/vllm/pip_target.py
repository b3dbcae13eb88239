"""Run pip's resolver for another machine: manylinux tags, CPython version and CPU architecture.

`--platform/--python-version/--implementation` only choose wheel tags; pip evaluates
dependency markers (`python_version > "3.11"`, `platform_machine == "aarch64"`) against the
interpreter running it. Resolving vLLM for a Python 3.12 aarch64 host from a Python 3.11 x86_64
one would silently drop or add dependencies, so pip runs with its marker environment set to the
target's. Standard library only: scripts/gpu-check imports this before anything is installed.
"""

from __future__ import annotations

# glibc 2.35 (Ubuntu 22.04) is the oldest OS of the profiles' boxes; llguidance, a vLLM dependency,
# ships Linux wheels for glibc >= 2.31 only, so the old manylinux2014 tags alone do not resolve vLLM
MANYLINUX = [f"manylinux_2_{minor}" for minor in range(35, 16, -1)] + ["manylinux2014"]

_RUN_PIP = """import runpy, sys
from pip._vendor.packaging import markers
target = dict(python_version=sys.argv[1], python_full_version=sys.argv[1] + ".0", platform_machine=sys.argv[2],
              sys_platform="linux", platform_system="Linux", os_name="posix", implementation_name="cpython",
              platform_python_implementation="CPython")
base = markers.default_environment
markers.default_environment = lambda: {**base(), **target}
sys.argv = ["pip", *sys.argv[3:]]
runpy.run_module("pip", run_name="__main__")
"""


def target_args(python_version: str, arch: str) -> list[str]:
    """pip's wheel-tag options for CPython `python_version` on manylinux `arch`, binary wheels only."""
    tags = [arg for tag in MANYLINUX for arg in ("--platform", f"{tag}_{arch}")]
    return [*tags, "--python-version", python_version, "--implementation", "cp", "--only-binary=:all:"]


def pip_argv(python: str, python_version: str, arch: str, args: list[str]) -> list[str]:
    """`python -m pip ARGS` with dependency markers evaluated for the target (add target_args to ARGS)."""
    return [python, "-c", _RUN_PIP, python_version, arch, *args]
