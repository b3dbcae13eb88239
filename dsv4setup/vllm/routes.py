"""The three ways vLLM gets into the serving venv: a pinned wheel, a git ref on vLLM's precompiled
binaries, a full CUDA source build, each through the chosen installer (uv or pip)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dsv4setup.core.errors import StepError
from dsv4setup.core.proc import StepLog, run_logged
from dsv4setup.profiles.model import VllmSpec
from dsv4setup.vllm.build import build_env_summary, release_of, wheel_version
from dsv4setup.vllm.installer import Installer

UPSTREAM_GIT = "https://github.com/vllm-project/vllm.git"


@dataclass(frozen=True)
class GitSource:
    url: str
    ref: str


def git_source(spec: VllmSpec) -> GitSource:
    """The git URL and ref to build: the profile's, or upstream at `v<version>` for source builds."""
    url = spec.git_url or UPSTREAM_GIT
    ref = spec.git_ref or (f"v{spec.version}" if spec.source == "source" else None)
    if ref is None:
        raise StepError("vllm.source is git but vllm.git_ref is unset",
                        fix="set vllm.git_ref to a tag, branch or commit of vllm.git_url (e.g. v0.33.0)")
    return GitSource(url, ref)


def check_precompiled_wheel(spec: VllmSpec) -> str:
    """The wheel vLLM's python-only build takes its binaries from; refuse anything but a matching one.

    Without VLLM_PRECOMPILED_WHEEL_LOCATION vLLM's setup silently picks a nightly wheel whose
    kernels need not match the checked-out Python code.
    """
    location = spec.precompiled_wheel
    example = f"https://github.com/vllm-project/vllm/releases/download/v{release_of(spec.version)}/" \
              f"vllm-{release_of(spec.version)}-cp38-abi3-manylinux_2_28_x86_64.whl"
    if not location:
        raise StepError("vllm.source is git but vllm.precompiled_wheel is unset: refusing to let vLLM pick "
                        "a nightly wheel that may not match the ref",
                        fix=f"set vllm.precompiled_wheel to the release wheel the ref builds on, e.g. {example} "
                             f"(a local path works too), or use vllm.source: source for a full build")
    found = wheel_version(location)
    if found is None:
        raise StepError(f"vllm.precompiled_wheel {location} is not a wheel file name",
                        fix=f"point it at a .whl, e.g. {example}")
    if release_of(found) != release_of(spec.version):
        raise StepError(f"vllm.precompiled_wheel is vLLM {found} but vllm.version is {spec.version}",
                        fix=f"use the {release_of(spec.version)} wheel, e.g. {example}, or fix vllm.version")
    if "://" not in location and not Path(location).expanduser().is_file():
        raise StepError(f"vllm.precompiled_wheel {location} does not exist",
                        fix="download it first (`pip download --no-deps vllm==VERSION -d DIR`) or give its URL")
    return location if "://" in location else str(Path(location).expanduser().absolute())


def checkout(source: GitSource, dest: Path, log: StepLog) -> str:
    """`dest` at exactly `source.ref` (tag, branch or commit); returns the commit.

    The clone is managed by dsv4setup: local changes (e.g. applied patches) are discarded, and
    the patches step re-applies its patches afterwards. `--` before the URL and ref: a value that
    starts with a dash is a (failing) name, never a git option such as --upload-pack.
    """
    git = shutil.which("git")
    if git is None:
        raise StepError("git is not installed", fix="install git (`sudo apt install git`), or use vllm.source: wheel")
    fix = f"check that {source.url} is reachable and has {source.ref}"
    if not (dest / ".git").is_dir():
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        run_logged([git, "clone", "--filter=blob:none", "--no-checkout", "--", source.url, str(dest)], log,
                   what=f"git clone {source.url}", fix=fix)
    else:
        run_logged([git, "-C", str(dest), "remote", "set-url", "--", "origin", source.url], log,
                   what="git remote set-url")
    # --tags: vLLM's version comes from setuptools-scm, which needs the release tags
    run_logged([git, "-C", str(dest), "fetch", "--tags", "--", "origin", source.ref], log,
               what=f"git fetch {source.ref}", fix=fix)
    run_logged([git, "-C", str(dest), "checkout", "--force", "--detach", "FETCH_HEAD"], log,
               what=f"git checkout {source.ref}")
    proc = subprocess.run([git, "-C", str(dest), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def wheel_requirements(spec: VllmSpec) -> list[str]:
    """What the wheel route installs (the resolution tests resolve exactly these against the real index)."""
    return [f"{spec.package}=={spec.version}"]


def install_wheel(installer: Installer, python: Path, spec: VllmSpec, constraints: Path | None,
                  log: StepLog, report: Callable[[str], None] | None = None) -> None:
    installer.install(python, wheel_requirements(spec), constraints, log, report=report)


def install_editable(installer: Installer, python: Path, src: Path, constraints: Path | None,
                     env: Mapping[str, str], log: StepLog, on_line: Callable[[str], None] | None = None,
                     report: Callable[[str], None] | None = None) -> None:
    log.line(f"build environment: {build_env_summary(env)}")
    installer.install(python, ["-e", str(src)], constraints, log, env=env, cwd=src, on_line=on_line, report=report)
