"""host.*, toolkit.*, python.* and vllm.* checks."""

from __future__ import annotations

from pathlib import Path

from dsv4setup.core.finding import Finding, failed, passed, skipped, warned
from dsv4setup.download.disk import DiskPart, judge_disk
from dsv4setup.hardware.facts import cc_str
from dsv4setup.hardware.rules import GB, vtuple
from dsv4setup.preflight.target import Ctx

SHM_FIX = ("containers: run with --shm-size=16g --ipc=host (docker/podman); bare metal: "
           "`sudo mount -o remount,size=16G /dev/shm`")


def _gb(value: float) -> str:
    return f"{value:.1f} GB"


def host_platform(c: Ctx) -> Finding:
    id_ = "host.platform"
    h = c.host
    summary = f"{h.get('arch')}, {h.get('os')}, kernel {h.get('kernel')}, {h.get('cpu_count')} CPUs"
    out_of_scope = c.rules.out_of_scope(h)
    if out_of_scope:
        return failed(id_, f"{summary}: {out_of_scope}", "use a Linux machine with NVIDIA GPUs (SM 9.0, 10.x or 12.x)")
    if h.get("arch") not in c.rules.host_arches:
        return failed(id_, f"{summary}: vLLM's CUDA and CPU wheels exist for {', '.join(c.rules.host_arches)} only",
                      "use an x86_64 or aarch64 Linux machine")
    return passed(id_, summary)


def host_ram(c: Ctx) -> Finding:
    id_ = "host.ram"
    ram = c.host.get("ram_bytes")
    limits = c.rules.host(c.target.cpu_only)
    if ram is None:
        return warned(id_, "RAM size unknown", "check `free -g`")
    have = _gb(ram / GB)
    if ram / GB < limits.ram_fail_below_gb:
        return failed(id_, f"{have} RAM < {limits.ram_fail_below_gb:g} GB minimum",
                      "use a machine with more RAM (loading the checkpoint and building kernels need it)")
    if ram / GB < limits.ram_warn_below_gb:
        return warned(id_, f"{have} RAM < {limits.ram_warn_below_gb:g} GB recommended",
                      "keep MAX_JOBS low for source builds; close other memory users while the model loads")
    return passed(id_, f"{have} RAM")


def host_shm(c: Ctx) -> Finding:
    id_ = "host.shm"
    shm = c.host.get("shm_bytes")
    limits = c.rules.host(c.target.cpu_only)
    if shm is None:
        if limits.shm_fail_below_gb > 0:
            return failed(id_, "no /dev/shm: NCCL and vLLM's shared-memory broadcast need it", SHM_FIX)
        return warned(id_, "no /dev/shm", SHM_FIX)
    have = f"/dev/shm {_gb(shm / GB)}" if shm >= GB else f"/dev/shm {shm / 2**20:.0f} MiB"
    if shm / GB < limits.shm_fail_below_gb:
        return failed(id_, f"{have} < {limits.shm_fail_below_gb:g} GB: NCCL fails with a small /dev/shm "
                           f"(a container's 64 MB default)", SHM_FIX)
    if shm / GB < limits.shm_warn_below_gb:
        return warned(id_, f"{have} < {limits.shm_warn_below_gb:g} GB recommended", SHM_FIX)
    return passed(id_, have)


def _toolkit_to_install(c: Ctx) -> bool:
    """Will the toolkit step install a toolkit? Not when the profile needs none, nor when its automatic route
    takes the machine's nvcc (same major release, minor >= wanted, able to target the GPU: toolkit/step.py)."""
    from dsv4setup.hardware.arch import arch_table, parse_release
    from dsv4setup.profiles.model import ToolkitSpec

    profile = c.target.profile
    wanted = (profile.toolkit if profile is not None else ToolkitSpec()).version
    if wanted is None:
        return False
    if profile is not None and profile.toolkit.route != "auto":
        return True
    nvcc = (c.snap.get("toolchain") or {}).get("nvcc") or {}
    release = nvcc.get("release") or nvcc.get("version")
    arch = (profile.toolkit.arch if profile is not None else None) or _target_arch(c)
    support = arch_table().get(arch or "")
    if not release or support is None:
        return True
    try:
        have, want = parse_release(str(release)), parse_release(wanted)
    except ValueError:
        return True
    return not (have[0] == want[0] and have >= want and have >= support.min_cuda)


def _disk_parts(c: Ctx) -> list[tuple[str, float]]:
    """(name, GB) of everything `up` still writes to the workdir's filesystem, net of what is there. With the
    download running beside the installs it is all on disk at once: checkpoint, venv, toolkit, the installer's
    cache (pip keeps its own copy of the wheels; uv links the venv to its cache, so it counts once) and a margin."""
    t = c.target
    limits = c.rules.host(t.cpu_only)
    contents = c.host.get("workdir_contents") or {}
    have_model = (contents.get("models_bytes") or 0) / GB
    parts: list[tuple[str, float]] = [("checkpoint", max(0.0, t.checkpoint_gb - have_model))]
    if not contents.get("venv"):
        parts.append(("venv", limits.disk_venv_gb))
        if t.profile is not None and t.profile.vllm.installer == "pip":
            parts.append(("pip cache", limits.disk_install_cache_gb))
    else:  # the next `upgrade` builds a generation beside it
        parts.append(("a next venv generation", limits.disk_generation_gb))
    if _toolkit_to_install(c) and not contents.get("toolkit"):
        parts.append(("CUDA toolkit", limits.disk_toolkit_gb))
    if t.vllm_source == "source":
        parts.append(("vLLM source build", limits.disk_source_build_gb))
    parts.append(("margin", limits.disk_margin_gb))
    return parts


def host_disk_workdir(c: Ctx) -> Finding:
    id_ = "host.disk_workdir"
    workdir = c.host.get("workdir", "?")
    free = (c.host.get("disk_free_bytes") or {}).get(workdir)
    if free is None:
        return warned(id_, f"free space at {workdir} unknown", f"check `df -h {workdir}`")
    parts = _disk_parts(c)
    check = judge_disk([DiskPart(name, round(gb * GB), "workdir") for name, gb in parts], {"workdir": free},
                       {"workdir": Path(workdir)})[0]
    words = [f"{name} {gb:g} GB" for name, gb in parts if gb > 0]
    have_model = ((c.host.get("workdir_contents") or {}).get("models_bytes") or 0) / GB
    if have_model:
        words.append(f"{_gb(have_model)} of the checkpoint already there")
    summary = f"{_gb(free / GB)} free at {workdir}, needs {_gb(check.need / GB)} at once ({', '.join(words)})"
    if not check.ok:
        return failed(id_, summary, f"free {_gb((check.need - free) / GB)} there, or use a workdir on a bigger disk "
                                    f"(--workdir DIR or DSV4SETUP_WORKDIR)")
    return passed(id_, summary)


def host_disk_hf_cache(c: Ctx) -> Finding:
    id_ = "host.disk_hf_cache"
    cache = c.host.get("hf_cache")
    if cache is None:
        return skipped(id_, "the snapshot does not name the Hugging Face cache")
    if c.host.get("same_filesystem"):
        return passed(id_, f"{cache} is on the workdir's filesystem (counted in host.disk_workdir)")
    free = (c.host.get("disk_free_bytes") or {}).get(cache)
    if free is None:
        return skipped(id_, f"free space at {cache} unknown")
    floor = c.rules.host(c.target.cpu_only).hf_cache_warn_below_gb
    if free / GB < floor:
        return warned(id_, f"{_gb(free / GB)} free at {cache} < {floor:g} GB (Hugging Face metadata, tokenizers)",
                      "point HF_HOME at a bigger disk")
    return passed(id_, f"{_gb(free / GB)} free at {cache}")


def _target_arch(c: Ctx) -> str | None:
    from dsv4setup.hardware.arch import arch_from_capability

    return arch_from_capability(c.cc) if c.cc else None


def toolkit_nvcc(c: Ctx) -> Finding:
    from dsv4setup.hardware.arch import arch_table, fmt, parse_release

    id_ = "toolkit.nvcc"
    if c.target.cpu_only:
        return skipped(id_, "CPU-only profile: no GPU to compile for (the toolkit step proves its own nvcc)")
    arch = (c.target.profile.toolkit.arch if c.target.profile else None) or _target_arch(c)
    if arch is None:
        return skipped(id_, "no GPU target known (see gpu.present)")
    support = arch_table().get(arch)
    wanted = c.target.profile.toolkit.version if c.target.profile else None
    if support is not None and wanted and parse_release(wanted) < support.min_cuda:
        return failed(id_, f"the profile installs CUDA {wanted}, which cannot target {arch} "
                           f"(needs >= {fmt(support.min_cuda)})", "--set toolkit.version=13.0.2")
    nvcc = (c.snap.get("toolchain") or {}).get("nvcc")
    installs = f"the toolkit step installs CUDA {wanted} into the workdir" if wanted else \
        "the toolkit step installs the profile's CUDA toolkit into the workdir"
    if nvcc is None:
        return passed(id_, f"no nvcc on PATH or in CUDA_HOME; {installs}")
    release = nvcc.get("release") or nvcc.get("version")
    if not release or support is None:
        return passed(id_, f"nvcc {release or '?'} at {nvcc.get('path')}; the toolkit step proves it compiles "
                           f"for {arch}")
    have = parse_release(release)
    if have < support.min_cuda or (support.max_cuda is not None and have > support.max_cuda):
        return warned(id_, f"nvcc {nvcc.get('version')} at {nvcc.get('path')} cannot target {arch} "
                           f"(needs CUDA >= {fmt(support.min_cuda)}); {installs}",
                      "nothing to do for dsv4setup; for your own builds put a newer toolkit first on PATH / CUDA_HOME")
    return passed(id_, f"nvcc {nvcc.get('version')} at {nvcc.get('path')} targets {arch} "
                       f"(needs CUDA >= {fmt(support.min_cuda)})")


def _covers(entry: str, cc: str) -> bool:
    """Does one TORCH_CUDA_ARCH_LIST entry ("12.0a", "12.0f", "9.0") build for this compute capability?"""
    base = entry.rstrip("af+PTX").strip()
    if base == cc:
        return True
    if entry.endswith("f"):  # family targets cover later minors of the same major (12.0f runs on 12.1)
        want, got = vtuple(cc), vtuple(base)
        return len(want) == 2 and len(got) == 2 and want[0] == got[0] and got[1] <= want[1]
    return False


def toolkit_arch(c: Ctx) -> Finding:
    id_ = "toolkit.arch"
    if c.target.cpu_only:
        return skipped(id_, "CPU-only profile: no GPU architecture to build for")
    if not c.group or not c.cc:
        return skipped(id_, "no GPU architecture known (see gpu.present)")
    from dsv4setup.hardware.arch import arch_from_capability, torch_arch_list

    want = arch_from_capability(c.cc)
    profile = c.target.profile
    if profile is None:
        return passed(id_, f"builds target {want} (from SM {c.cc})")
    problems = []
    if profile.toolkit.arch and profile.toolkit.arch != want:
        problems.append(f"toolkit.arch is {profile.toolkit.arch}")
    arch_list = profile.vllm.torch_arch_list
    if arch_list and not any(_covers(e, c.cc) for e in arch_list.replace(";", " ").replace(",", " ").split()):
        problems.append(f"vllm.torch_arch_list is {arch_list!r}")
    if problems:
        return failed(id_, f"the GPUs are SM {c.cc} ({want}) but {' and '.join(problems)}: binaries for another "
                           f"target fail at run time (sm_100a on SM 10.3 silently)",
                      f"--set toolkit.arch={want} --set vllm.torch_arch_list={torch_arch_list(want)}")
    return passed(id_, f"builds for {want}, the GPUs' target (SM {c.cc})")


def toolkit_build_tools(c: Ctx) -> Finding:
    id_ = "toolkit.build_tools"
    source = c.target.vllm_source
    if source == "wheel":
        return skipped(id_, "vLLM comes from a wheel: no compiler or git needed")
    chain = c.snap.get("toolchain") or {}
    gcc, git = chain.get("gcc"), chain.get("git")
    if git is None:
        return failed(id_, f"vllm.source is {source} but git is not installed", "install git (apt install git)")
    if source == "source":
        floor = c.rules.gcc_min_for_source_build
        if gcc is None or vtuple(gcc) < vtuple(floor):
            return failed(id_, f"a vLLM source build needs GCC >= {floor}; found {gcc or 'none'}",
                          "install a newer GCC (apt install gcc-12 g++-12, then CC=gcc-12 CXX=g++-12) or conda "
                          "install -c conda-forge gxx=12")
    return passed(id_, f"git {git}, gcc {gcc or 'not needed'} for a {source} install of vLLM")


def python_version(c: Ctx) -> Finding:
    id_ = "python.version"
    env = c.snap.get("python_env") or {}
    rules = c.rules
    if env.get("python"):
        version, where = env["python"], f"the serving venv ({env.get('venv_python')})"
    elif c.target.profile is not None and c.target.profile.vllm.python:
        return skipped(id_, f"the venv will use {c.target.profile.vllm.python}; the vllm step checks its version")
    else:
        version, where = c.host.get("python", "?"), "the Python running dsv4setup (the venv's default)"
    rng = f">={rules.python_min},<{rules.python_max_exclusive}"
    have = vtuple(version)[:2]
    if not have or have < vtuple(rules.python_min) or have >= vtuple(rules.python_max_exclusive):
        return failed(id_, f"Python {version} in {where} is outside vLLM's supported {rng}",
                      f"--set vllm.python=/path/to/python3.12 (any {rng}; e.g. `uv python install 3.12` or "
                      f"apt install python3.12-venv), then `dsv4setup up --redo vllm`")
    return passed(id_, f"Python {version} in {where} is within {rng}")


def vllm_installed(c: Ctx) -> Finding:
    id_ = "vllm.installed"
    env = c.snap.get("python_env") or {}
    if not env.get("venv_python"):
        return skipped(id_, f"no serving venv yet in {c.host.get('workdir')}: the vllm step creates it")
    if env.get("error"):
        return warned(id_, f"the serving venv did not answer: {env['error']}", "`dsv4setup up --redo vllm`")
    want = c.target.vllm_version
    have = env.get("vllm")
    if have is None:
        return warned(id_, "the serving venv has no vLLM", "`dsv4setup up --only vllm` installs it")
    if want and vtuple(have)[:3] != vtuple(want)[:3]:
        return warned(id_, f"the venv has vLLM {have}, the profile wants {want}",
                      "`dsv4setup up` reinstalls it (and re-applies patches)")
    return passed(id_, f"vLLM {have}, torch {env.get('torch') or '?'} in the serving venv")


def vllm_torch_cuda(c: Ctx) -> Finding:
    id_ = "vllm.torch_cuda"
    env = c.snap.get("python_env") or {}
    torch_cuda = env.get("torch_cuda")
    driver = c.snap.get("driver") or {}
    if c.target.cpu_only or not torch_cuda:
        return skipped(id_, "no CUDA torch in the serving venv")
    cuda = driver.get("cuda_driver")
    if not cuda:
        return skipped(id_, f"torch built for CUDA {torch_cuda}; the driver's CUDA version is unknown")
    need, have = vtuple(torch_cuda)[:2], vtuple(cuda)[:2]
    summary = f"torch {env.get('torch')} built for CUDA {torch_cuda}, driver supports CUDA {cuda}"
    if need[:1] > have[:1]:
        return failed(id_, f"{summary}: CUDA calls fail ('driver is too old')",
                      f"{c.rules.driver_install_hint}, or install a torch/vLLM built for CUDA {cuda}")
    if need > have:
        return warned(id_, f"{summary}: runs through minor-version compatibility; PTX JIT may fail",
                      "update the driver to the branch of the torch CUDA version")
    return passed(id_, summary)


def vllm_speculative_tokens(c: Ctx) -> Finding:
    id_ = "vllm.speculative_tokens"
    if c.target.cpu_only:
        return skipped(id_, "CPU-only profile: no GPU kernel limits on the draft length")
    if not c.group:
        return skipped(id_, "no GPU visible: the draft length limits depend on the GPU")
    k = c.target.num_speculative_tokens
    family = c.rules.spec_families.get(c.family or "")
    if family is None:
        return passed(id_, f"num_speculative_tokens={k} (no known limit for SM {c.cc or '?'})")
    allowed = family.allowed_for(c.target.vllm_version)
    listed = ", ".join(map(str, allowed))
    if k not in allowed:
        return warned(id_, f"num_speculative_tokens={k} on SM {c.cc}: {family.why}",
                      f"--set spec.num_speculative_tokens={family.default} (allowed here: {listed}); "
                      f"the recommendation uses {family.default}")
    return passed(id_, f"num_speculative_tokens={k} on SM {c.cc} (allowed: {listed})")


def _flag_text(args: tuple[str, ...]) -> str:
    """Profile args as vLLM reads them: '_' = '-' in flag names, '--a=b' = '--a b'."""
    from dsv4setup.profiles.flags import normalize

    words = []
    for token in args:
        flag = normalize(token)
        if flag is not None and "=" in token and token.startswith("--"):
            words += [flag, token.split("=", 1)[1]]
        else:
            words.append(flag or token)
    return " " + " ".join(words) + " "


def vllm_serve_args(c: Ctx) -> Finding:
    id_ = "vllm.serve_args"
    if c.target.profile is None:
        return skipped(id_, "no profile: no serve flags to check")
    if c.target.cpu_only:
        return skipped(id_, "CPU-only profile: eager mode and CPU flags are expected")
    text = _flag_text(c.target.serve_extra_args)
    family = c.family
    for rule in c.rules.serve_arg_rules:
        if family not in rule.only_families and f" {rule.flag} " in text:
            return Finding(id_, "fail" if rule.status == "fail" else "warn",
                               f"serve.extra_args has {rule.flag} on SM {c.cc}: {rule.why}",
                               f"remove {rule.flag} from serve.extra_args")
    if c.target.enforce_eager:
        return warned(id_, c.rules.enforce_eager_why, "--set serve.enforce_eager=false")
    gpu = cc_str(c.group[0]) if c.group else "?"
    return passed(id_, f"no serve flag of the profile conflicts with SM {gpu}")


CHECKS = (host_platform, host_ram, host_shm, host_disk_workdir, host_disk_hf_cache, toolkit_nvcc, toolkit_arch,
          toolkit_build_tools, python_version, vllm_installed, vllm_torch_cuda, vllm_speculative_tokens,
          vllm_serve_args)
