"""toolkit: a CUDA toolkit whose nvcc compiles for the GPU's exact arch, installed without sudo.

Which nvcc is used:
- a route is forced (`--toolkit pip|conda`, or `toolkit.route` in the profile): always this
  step's own install under `<workdir>/toolkit`, even when the machine already has an nvcc;
- automatic: this step's own earlier install when it holds the wanted release, else an
  nvcc already on the machine (same major release, minor >= wanted, compiles for the arch),
  else a fresh install: conda when conda/mamba/micromamba is on PATH, pip otherwise.
The conda route uses NVIDIA's per-release channel unless the option `toolkit_conda_channel`
is "conda-forge". Later steps read `cuda_home` from this step's outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from dsv4setup.core.engine import Postcondition, RunContext, Step
from dsv4setup.core.errors import StepError, UsageError
from dsv4setup.core.proc import StepLog
from dsv4setup.toolkit.arch import Release, arches_from_preflight, fmt, is_arch, parse_release, support_hint
from dsv4setup.toolkit.install import (
    CondaChannel,
    Route,
    ToolkitLayout,
    choose_route,
    find_conda,
    install_conda,
    install_pip,
    requested_route,
)
from dsv4setup.toolkit.nvcc import CompileResult, HostTools, compile_probe, error_lines, nvcc_release

CPU_DEMO_WHY = ("no GPU here, and the CPU server does not use CUDA: the toolkit is installed anyway so the demo "
                "runs the toolkit step for real (pip CUDA, nvcc compiling a test kernel), as on a GPU box")


@dataclass(frozen=True)
class Target:
    version: str
    release: Release
    arch: str
    forced: Route | None
    channel: CondaChannel


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
            raise StepError(f"toolkit.arch {arch!r} is not an nvcc target", hint="write it like sm_120a or sm_90a")
        return arch
    found = arches_from_preflight(ctx.output("preflight"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise StepError("no target GPU architecture: toolkit.arch is unset and the preflight step reported no "
                        "GPU compute capability",
                        hint="set it, e.g. `--set toolkit.arch=sm_120a` (RTX PRO 6000), sm_121a (GB10), "
                             "sm_90a (H100/H200), sm_100a (B200); or run preflight on the GPU machine")
    raise StepError(f"the GPUs have different architectures ({', '.join(found)})",
                    hint="set toolkit.arch to the one vLLM will run on, e.g. `--set toolkit.arch=" + found[0] + "`")


class ToolkitStep(Step):
    name = "toolkit"
    description = "CUDA toolkit (nvcc) for the GPU's exact arch, in the workdir, no sudo"
    needs = ("preflight",)

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
            raise StepError(f"toolkit.version: {exc}", hint="write a CUDA release such as 13.0.2") from None
        channel = ctx.options.get("toolkit_conda_channel") or "nvidia"
        if channel not in ("nvidia", "conda-forge"):
            raise UsageError(f"toolkit conda channel {channel!r}: expected nvidia or conda-forge")
        forced = requested_route(ctx.options.get("toolkit_route"), ctx.profile.toolkit.route)
        return Target(version, release, resolve_arch(ctx), forced, channel)

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
        """This step's earlier install, when it holds the wanted release and compiles for the arch."""
        routes: tuple[Route, ...] = (target.forced,) if target.forced else ("pip", "conda")
        for route in routes:
            nvcc = layout.nvcc(route)
            if nvcc is None or not layout.holds_release(route, target.version, target.channel):
                continue
            release = nvcc_release(nvcc)
            if release != target.release:
                continue
            compiled = compile_probe(nvcc, target.arch)
            if compiled.ok:
                return Found(nvcc, release, compiled, route)
        return None

    def system_nvcc(self, target: Target, note: Callable[[str], None] = lambda _m: None) -> Found | None:
        """An nvcc already on the machine: same major release, minor >= wanted, compiles for the arch."""
        for nvcc in self.host.nvcc_candidates():
            release = nvcc_release(nvcc)
            if release is None or release[0] != target.release[0] or release < target.release:
                note(f"not using {nvcc}: release {fmt(release) if release else 'unknown'}, "
                     f"wanted {target.release[0]}.x >= {fmt(target.release)}")
                continue
            compiled = compile_probe(nvcc, target.arch)
            if compiled.ok:
                return Found(nvcc, release, compiled, "system")
            note(f"not using {nvcc}: cannot compile for {target.arch}: {error_lines(compiled.output, 1)}")
        return None

    def existing(self, ctx: RunContext, target: Target,
                 note: Callable[[str], None] = lambda _m: None) -> Found | None:
        found = self.own_install(self.layout(ctx), target)
        if found is None and target.forced is None:
            found = self.system_nvcc(target, note)
        return found

    def is_done(self, ctx: RunContext) -> Postcondition:
        try:
            target = self.target(ctx)
        except StepError as exc:
            return Postcondition(False, exc.message)
        found = self.existing(ctx, target)
        if found is None:
            where = f"{target.forced} install in {ctx.workdir.toolkit_dir}" if target.forced else \
                f"{ctx.workdir.toolkit_dir} or on this machine"
            return Postcondition(False, f"no nvcc of CUDA {target.version} compiling for {target.arch} ({where})")
        return Postcondition(True, f"nvcc {fmt(found.release)} ({found.route}) at {found.nvcc} "
                                   f"compiles for {target.arch}")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        target = self.target(ctx)
        log = ctx.require_log()
        ctx.progress(f"looking for an nvcc of CUDA {fmt(target.release)} that compiles for {target.arch}")
        found = self.existing(ctx, target, log.line)
        if found is not None:
            log.line(f"using the existing nvcc {found.nvcc} ({found.route}, release {fmt(found.release)})")
            return self.outputs(found, target)
        layout = self.layout(ctx)
        conda = find_conda(self.host)
        route = choose_route(target.forced, conda)
        if ctx.profile.match.cpu_only:
            ctx.progress(CPU_DEMO_WHY)
        ctx.progress(f"installing CUDA {target.version} into {layout.root} via {route}")
        if route == "conda":
            if conda is None:
                raise StepError("the conda route is forced but no conda, mamba or micromamba is on PATH",
                                hint="install micromamba (a single binary, no sudo) or use `--toolkit pip`")
            install_conda(conda, layout, target.version, target.channel, log)
        else:
            install_pip(layout, target.version, log, report=ctx.progress)
        nvcc = layout.nvcc(route)
        if nvcc is None:
            where = (layout.conda_prefix / "bin" if route == "conda"
                     else layout.venv / "lib/python*/site-packages/nvidia/*/bin")
            raise StepError(f"no nvcc found after the {route} install of CUDA {target.version} (looked in {where})",
                            hint=f"see {log.path}; the package set may lack the compiler for this platform. "
                                 f"Try the other route (`--toolkit {'pip' if route == 'conda' else 'conda'}`)")
        ctx.progress(f"compiling a test kernel for {target.arch}")
        return self.outputs(self.check(nvcc, target, route, log), target)

    def check(self, nvcc: Path, target: Target, route: Route, log: StepLog) -> Found:
        release = nvcc_release(nvcc)
        if release != target.release:
            raise StepError(f"{nvcc} reports release {fmt(release) if release else 'unknown'}, "
                            f"not {fmt(target.release)}",
                            hint=f"remove {nvcc.parents[1]} and run again; see {log.path}")
        compiled = compile_probe(nvcc, target.arch)
        if not compiled.ok:
            log.write(compiled.output)
            raise StepError(f"nvcc {fmt(release)} at {nvcc} cannot compile for {target.arch}: "
                            f"{error_lines(compiled.output, 2)}",
                            hint=support_hint(target.arch, release))
        log.line(f"nvcc {fmt(release)} at {nvcc} compiled a test kernel for {target.arch}")
        return Found(nvcc, release, compiled, route)

    @staticmethod
    def outputs(found: Found, target: Target) -> dict[str, Any]:
        cuda_home = found.compiled.cuda_home or found.nvcc.resolve().parents[1]
        return {"cuda_home": str(cuda_home), "nvcc": str(found.nvcc),
                "version": target.version if found.route != "system" else fmt(found.release),
                "release": fmt(found.release), "route": found.route, "arch": target.arch}


STEP = ToolkitStep
