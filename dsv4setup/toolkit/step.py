"""toolkit: a CUDA toolkit whose nvcc compiles for the GPU's exact arch, installed without sudo.

Which nvcc is used:
- a route is forced (`--toolkit pip|conda`, or `toolkit.route` in the profile): always this
  step's own install under `<workdir>/toolkit`, even when the machine already has an nvcc;
- automatic: this step's own earlier install when it holds the wanted release, else an
  nvcc already on the machine (same major release, minor >= wanted, compiles for the arch),
  else a fresh install: conda when conda/mamba/micromamba is on PATH, pip otherwise. A forced
  conda route without a conda binary installs the same packages with py-rattler.
The conda route uses NVIDIA's per-release channel unless the option `toolkit_conda_channel`
is "conda-forge" or a mirror (URL or directory). Later steps read `cuda_home` from this step's outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from dsv4setup.core.errors import StepError, UsageError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.core.proc import StepLog
from dsv4setup.engine import RunContext, Step
from dsv4setup.hardware.arch import Release, arches_from_preflight, fmt, is_arch, parse_release, support_fix
from dsv4setup.preflight.outputs import PreflightOutputs
from dsv4setup.toolkit.install import (
    CondaChannel,
    Route,
    ToolkitLayout,
    choose_route,
    find_conda,
    install_conda,
    install_pip,
    is_channel_location,
    requested_route,
)
from dsv4setup.toolkit.nvcc import CompileResult, HostTools, compile_probe, error_lines, nvcc_release, proven_compile
from dsv4setup.toolkit.outputs import ToolkitOutputs
from dsv4setup.vllm.installer import Installer, base_python, requested_installer

NVCC_PROOFS = "nvcc-proofs.json"  # in the toolkit directory: {sha256(nvcc):arch -> compiled}

CPU_DEMO_WHY = ("no GPU here, and the CPU server does not use CUDA: the toolkit is installed anyway so the demo "
                "runs the toolkit step for real (pip CUDA, nvcc compiling a test kernel), as on a GPU box")


@dataclass(frozen=True)
class Target:
    version: str
    release: Release
    arch: str
    forced: Route | None
    channel: CondaChannel
    on_gpu: bool  # preflight saw a GPU of this arch: the probe kernel must also run there


@dataclass(frozen=True)
class Found:
    nvcc: Path
    release: Release
    compiled: CompileResult
    route: str  # pip, conda or system


def resolve_arch(ctx: RunContext) -> str:
    """profile toolkit.arch, else the one architecture the preflight step found."""
    arch = ctx.profile.toolkit.arch
    if arch:
        if not is_arch(arch):
            raise StepError(f"toolkit.arch {arch!r} is not an nvcc target", fix="write it like sm_120a or sm_90a")
        return arch
    preflight = ctx.outputs(PreflightOutputs)
    found = arches_from_preflight(preflight.model_dump() if preflight else {})
    if len(found) == 1:
        return found[0]
    if not found:
        raise StepError("no target GPU architecture: toolkit.arch is unset and the preflight step reported no "
                        "GPU compute capability",
                        fix="set it, e.g. `--set toolkit.arch=sm_120a` (RTX PRO 6000), sm_121a (GB10), "
                             "sm_90a (H100/H200), sm_100a (B200); or run preflight on the GPU machine")
    raise StepError(f"the GPUs have different architectures ({', '.join(found)})",
                    fix="set toolkit.arch to the one vLLM will run on, e.g. `--set toolkit.arch=" + found[0] + "`")


class ToolkitStep(Step):
    name = "toolkit"
    description = "CUDA toolkit (nvcc) for the GPU's exact arch, in the workdir, no sudo"
    needs = ("preflight",)
    Outputs = ToolkitOutputs

    def __init__(self, host: HostTools | None = None) -> None:
        self.host = host if host is not None else HostTools.from_environ()

    def not_applicable(self, ctx: RunContext) -> str | None:
        if ctx.profile.toolkit.version is None:
            return "the profile needs no CUDA toolkit (toolkit.version is null)"
        return None

    def target(self, ctx: RunContext) -> Target:
        version = cast(str, ctx.profile.toolkit.version)
        try:
            release = parse_release(version)
        except ValueError as exc:
            raise StepError(f"toolkit.version: {exc}", fix="write a CUDA release such as 13.0.2") from None
        channel = ctx.options.get("toolkit_conda_channel") or "nvidia"
        if channel not in ("nvidia", "conda-forge") and not is_channel_location(channel):
            raise UsageError(f"toolkit conda channel {channel!r}: expected nvidia, conda-forge, or a mirror's URL "
                             f"or directory")
        forced = requested_route(ctx.options.get("toolkit_route"), ctx.profile.toolkit.route)
        arch = resolve_arch(ctx)
        preflight = ctx.outputs(PreflightOutputs)
        on_gpu = arch in arches_from_preflight(preflight.model_dump() if preflight else {})
        return Target(version, release, arch, forced, cast(CondaChannel, channel), on_gpu)

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        try:
            arch: str | None = resolve_arch(ctx)
        except StepError:
            arch = None
        return {"version": ctx.profile.toolkit.version, "arch": arch,
                "route": ctx.options.get("toolkit_route") or ctx.profile.toolkit.route,
                "conda_channel": ctx.options.get("toolkit_conda_channel") or "nvidia"}

    def layout(self, ctx: RunContext) -> ToolkitLayout:
        return ToolkitLayout(ctx.workdir.toolkit_dir)

    def own_install(self, layout: ToolkitLayout, target: Target) -> Found | None:
        """This step's earlier install, when it holds the wanted release and compiles for the arch (once per
        nvcc sha256 and arch: the proof lies in the toolkit directory)."""
        routes: tuple[Route, ...] = (target.forced,) if target.forced else ("pip", "conda")
        for route in routes:
            nvcc = layout.nvcc(route)
            if nvcc is None or not layout.holds_release(route, target.version, target.channel):
                continue
            release = nvcc_release(nvcc)
            if release != target.release:
                continue
            compiled = proven_compile(nvcc, target.arch, layout.root / NVCC_PROOFS)
            if compiled.ok:
                return Found(nvcc, release, compiled, route)
        return None

    def system_nvcc(self, target: Target, proofs: Path, note: Callable[[str], None] = lambda _m: None) -> Found | None:
        """An nvcc already on the machine: same major release, minor >= wanted, compiles for the arch."""
        for nvcc in self.host.nvcc_candidates():
            release = nvcc_release(nvcc)
            if release is None or release[0] != target.release[0] or release < target.release:
                note(f"not using {nvcc}: release {fmt(release) if release else 'unknown'}, "
                     f"wanted {target.release[0]}.x >= {fmt(target.release)}")
                continue
            compiled = proven_compile(nvcc, target.arch, proofs)
            if compiled.ok:
                return Found(nvcc, release, compiled, "system")
            note(f"not using {nvcc}: cannot compile for {target.arch}: {error_lines(compiled.output, 1)}")
        return None

    def existing(self, ctx: RunContext, target: Target,
                 note: Callable[[str], None] = lambda _m: None) -> Found | None:
        found = self.own_install(self.layout(ctx), target)
        if found is None and target.forced is None:
            found = self.system_nvcc(target, self.layout(ctx).root / NVCC_PROOFS, note)
        return found

    def is_done(self, ctx: RunContext) -> Finding:
        try:
            target = self.target(ctx)
        except StepError as exc:
            return postcondition(False, exc.message)
        found = self.existing(ctx, target)
        if found is None:
            where = f"{target.forced} install in {ctx.workdir.toolkit_dir}" if target.forced else \
                f"{ctx.workdir.toolkit_dir} or on this machine"
            return postcondition(False, f"no nvcc of CUDA {target.version} compiling for {target.arch} ({where})")
        done = f"nvcc {fmt(found.release)} ({found.route}) at {found.nvcc} compiles for {target.arch}"
        if not target.on_gpu:
            return postcondition(True, done)
        ran = compile_probe(found.nvcc, target.arch, run=True)
        if not ran.ok:
            return postcondition(False, f"{done}, but its probe kernel did not run on the GPU: "
                                        f"{error_lines(ran.output, 1)}")
        return postcondition(True, f"{done}; its probe kernel ran on the GPU and wrote the expected values")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        target = self.target(ctx)
        log = ctx.require_log()
        ctx.progress(f"looking for an nvcc of CUDA {fmt(target.release)} that compiles for {target.arch}")
        found = self.existing(ctx, target, log.line)
        if found is not None:
            log.line(f"using the existing nvcc {found.nvcc} ({found.route}, release {fmt(found.release)})")
            return self.outputs(self.ran_on_gpu(found, target, log), target)
        layout = self.layout(ctx)
        conda = find_conda(self.host)
        route = choose_route(target.forced, conda)
        if ctx.profile.match.cpu_only:
            ctx.progress(CPU_DEMO_WHY)
        ctx.progress(f"installing CUDA {target.version} into {layout.root} via {route}")
        if route == "conda" and conda is not None:
            install_conda(conda, layout, target.version, target.channel, log)
        elif route == "conda":
            from dsv4setup.toolkit.rattler_install import install_rattler  # asyncio and rattler: only to install

            install_rattler(layout, target.version, target.channel, log)
        else:
            installer = Installer.choose(requested_installer(ctx.options.get("installer"), ctx.profile.vllm.installer),
                                         base_python(None))
            installer.report(log, ctx.progress)
            install_pip(layout, target.version, log, installer, report=ctx.progress)
        nvcc = layout.nvcc(route)
        if nvcc is None:
            where = (layout.conda_prefix / "bin" if route == "conda"
                     else layout.venv / "lib/python*/site-packages/nvidia/*/bin")
            raise StepError(f"no nvcc found after the {route} install of CUDA {target.version} (looked in {where})",
                            fix=f"see {log.path}; the package set may lack the compiler for this platform. "
                                 f"Try the other route (`--toolkit {'pip' if route == 'conda' else 'conda'}`)")
        ctx.progress(f"compiling a test kernel for {target.arch}")
        return self.outputs(self.ran_on_gpu(self.check(nvcc, target, route, log), target, log), target)

    def check(self, nvcc: Path, target: Target, route: Route, log: StepLog) -> Found:
        release = nvcc_release(nvcc)
        if release != target.release:
            raise StepError(f"{nvcc} reports release {fmt(release) if release else 'unknown'}, "
                            f"not {fmt(target.release)}",
                            fix=f"remove {nvcc.parents[1]} and run again; see {log.path}")
        compiled = compile_probe(nvcc, target.arch)
        if not compiled.ok:
            log.write(compiled.output)
            raise StepError(f"nvcc {fmt(release)} at {nvcc} cannot compile for {target.arch}: "
                            f"{error_lines(compiled.output, 2)}",
                            fix=support_fix(target.arch, release))
        log.line(f"nvcc {fmt(release)} at {nvcc} compiled a test kernel for {target.arch}")
        return Found(nvcc, release, compiled, route)

    @staticmethod
    def ran_on_gpu(found: Found, target: Target, log: StepLog) -> Found:
        """With a GPU of the target arch: the probe program must also run there and compute right."""
        if not target.on_gpu:
            return found
        ran = compile_probe(found.nvcc, target.arch, run=True)
        log.write(ran.output)
        if not ran.ok:
            raise StepError(f"nvcc {fmt(found.release)} at {found.nvcc} compiles for {target.arch}, but its probe "
                            f"kernel did not run on the GPU: {error_lines(ran.output, 1)}",
                            fix=f"check the driver with `nvidia-smi` (CUDA {fmt(found.release)} needs a driver "
                                 f"that supports it: R580+ for 13.x), CUDA_VISIBLE_DEVICES, and that no other "
                                 f"process holds the GPU in exclusive mode; see {log.path}")
        log.line(f"the probe kernel for {target.arch} ran on the GPU and wrote the expected values")
        return found

    @staticmethod
    def outputs(found: Found, target: Target) -> dict[str, Any]:
        cuda_home = found.compiled.cuda_home or found.nvcc.resolve().parents[1]
        return {"cuda_home": str(cuda_home), "nvcc": str(found.nvcc),
                "version": target.version if found.route != "system" else fmt(found.release),
                "release": fmt(found.release), "route": found.route, "arch": target.arch}


STEP = ToolkitStep
