"""gpu.*, topology.* and driver.* checks."""

from __future__ import annotations

from collections import Counter

from dsv4setup.core.finding import Finding, failed, passed, skipped, warned
from dsv4setup.hardware.facts import (
    Gpu,
    cc_str,
    gpu_label,
    group_links,
    interconnect,
    memory_bytes,
    nvml_started,
    plural,
    visible_gpus,
)
from dsv4setup.hardware.memory import kv_gb, need_gb, usable_gb
from dsv4setup.hardware.rules import GB, vtuple
from dsv4setup.preflight.implied import p2p_problems
from dsv4setup.preflight.target import Ctx
from dsv4setup.profiles.match import no_gpu_fix

CPU_ONLY = "CPU-only profile {}: no GPU needed"


def _gb(value: float) -> str:
    return f"{value:.1f} GB"


def _describe(c: Ctx, gpus: list[Gpu]) -> str:
    """'2x NVIDIA RTX PRO 6000 ... (SM 12.0, 102.6 GB, 300 W)' for each kind of GPU."""
    kinds: Counter[str] = Counter()
    for g in gpus:
        mem, unified = memory_bytes(c.snap, g, c.rules.memory.unified_memory_uses_host_ram)
        bits = [f"SM {cc_str(g) or '?'}"]
        if mem is not None:
            bits.append(f"{_gb(mem / GB)}{' unified' if unified else ''}")
        if g.get("power_limit_max_w"):
            bits.append(f"{g['power_limit_max_w']} W")
        kinds[f"{gpu_label(g)} ({', '.join(bits)})"] += 1
    return "; ".join(f"{n}x {kind}" for kind, n in kinds.items())


def _skip_gpu(c: Ctx, id_: str) -> Finding | None:
    """The common reasons a GPU check has nothing to judge."""
    if c.target.cpu_only:
        return skipped(id_, CPU_ONLY.format(c.target.profile_name))
    if not nvml_started(c.snap):
        return skipped(id_, "no GPU facts: NVML did not start (see driver.present)")
    if not c.group:
        return skipped(id_, "no GPU visible (see gpu.present)")
    return None


def gpu_present(c: Ctx) -> Finding:
    id_ = "gpu.present"
    all_gpus = c.snap.get("gpus") or []
    if c.target.cpu_only:
        extra = f" (this machine has {plural(len(all_gpus), 'GPU')}, unused)" if all_gpus else ""
        return skipped(id_, CPU_ONLY.format(c.target.profile_name) + extra)
    if not nvml_started(c.snap):
        return skipped(id_, "cannot list GPUs: NVML did not start (see driver.present)")
    gpus = visible_gpus(c.snap)
    if not gpus:
        mask = c.host.get("cuda_visible_devices")
        if all_gpus and mask is not None:
            return failed(id_, f"CUDA_VISIBLE_DEVICES={mask!r} hides all {len(all_gpus)} GPU(s)",
                          "unset CUDA_VISIBLE_DEVICES or list valid GPU indices (see `nvidia-smi -L`)")
        return failed(id_, "the NVIDIA driver is loaded but NVML sees no GPU",
                      f"check `nvidia-smi`; {no_gpu_fix(c.snap, c.rules)}")
    return passed(id_, f"{plural(len(gpus), 'GPU')}: {_describe(c, gpus)}")


def gpu_architecture(c: Ctx) -> Finding:
    id_ = "gpu.architecture"
    if (skip := _skip_gpu(c, id_)) is not None:
        return skip
    rules = c.rules
    supported = "; ".join(f"SM {cc}: {a.gpus}" for cc, a in rules.archs.items())
    ccs = {cc_str(g) for g in c.group}
    if None in ccs:
        return warned(id_, "NVML reports no compute capability for a TP GPU",
                      "check the GPU with `nvidia-smi -q`; set toolkit.arch and vllm.torch_arch_list explicitly")
    old = sorted(cc for cc in ccs if cc and vtuple(cc) < vtuple(rules.min_supported_cc))
    if old:
        names = ", ".join(sorted({gpu_label(g) for g in c.group if cc_str(g) in old}))
        return failed(id_, f"SM {', '.join(old)} ({names}): {rules.unsupported_why}",
                      f"use supported GPUs: {supported}")
    unknown = sorted(cc for cc in ccs if cc and cc not in rules.archs)
    if unknown:
        return warned(id_, f"SM {', '.join(unknown)} is newer than anything this doctor knows; it may work",
                      "check vLLM's release notes for this GPU; set toolkit.arch and vllm.torch_arch_list "
                      "to its target explicitly")
    known = sorted(cc for cc in ccs if cc)
    return passed(id_, "; ".join(f"SM {cc} ({rules.archs[cc].gpus}) is supported" for cc in known))


def _identity(g: Gpu) -> tuple[object, ...]:
    return g.get("name"), g.get("memory_total_bytes"), tuple(g.get("compute_capability") or ())


def gpu_identical(c: Ctx) -> Finding:
    id_ = "gpu.identical"
    if (skip := _skip_gpu(c, id_)) is not None:
        return skip
    if len(c.group) == 1:
        return passed(id_, "one GPU per node in the TP group")
    kinds = Counter(_identity(g) for g in c.group)
    if len(kinds) == 1:
        return passed(id_, f"the {len(c.group)} TP GPUs are identical ({gpu_label(c.group[0])})")
    commonest = Counter(_identity(g) for g in visible_gpus(c.snap)).most_common(1)[0][0]
    same = [str(g["index"]) for g in visible_gpus(c.snap) if _identity(g) == commonest]
    found = ", ".join(f"GPU {g['index']}: {gpu_label(g)}" for g in c.group)
    return failed(id_, f"tensor parallelism needs identical GPUs; the TP group mixes {found}",
                  f"pick identical GPUs, e.g. CUDA_VISIBLE_DEVICES={','.join(same[:c.target.gpus_per_node])} "
                  f"(or fewer GPUs: --set serve.tensor_parallel_size=N)")


def gpu_count(c: Ctx) -> Finding:
    id_ = "gpu.count"
    if (skip := _skip_gpu(c, id_)) is not None:
        return skip
    t = c.target
    visible = len(visible_gpus(c.snap))
    where = f"TP={t.tensor_parallel_size}" + (f" over {t.nodes} nodes ({t.gpus_per_node} per node)"
                                               if t.nodes > 1 else "")
    if visible < t.gpus_per_node:
        return failed(id_, f"{where} needs {t.gpus_per_node} GPUs on this node, {visible} visible",
                      f"choose a profile for {visible} GPU(s) (`dsv4setup profile list`), or "
                      f"--set serve.tensor_parallel_size={visible} if the memory still fits")
    used = ",".join(str(g["index"]) for g in c.group)
    summary = f"{where}: GPU {used} here ({visible} visible)"
    if t.tensor_parallel_size in c.rules.tp_warn:
        return warned(id_, f"{summary}: {c.rules.tp_warn[t.tensor_parallel_size]}",
                      "use --set serve.tensor_parallel_size=2 (or 4) with a W4A16 checkpoint")
    return passed(id_, summary)


def gpu_memory(c: Ctx) -> Finding:
    id_ = "gpu.memory"
    if (skip := _skip_gpu(c, id_)) is not None:
        return skip
    t, rules = c.target, c.rules
    usable = usable_gb(c.snap, c.group, t.gpu_memory_utilization, rules)
    if usable is None:
        return warned(id_, "NVML reports no memory size for a TP GPU and the host RAM is unknown",
                      "check `nvidia-smi -q -d MEMORY`; the load will tell (watch for CUDA out of memory)")
    need = need_gb(rules, t.checkpoint_gb, t.max_model_len, t.tensor_parallel_size)
    unified = any(memory_bytes(c.snap, g)[1] for g in c.group)
    n = len(c.group)
    each = usable / n / t.gpu_memory_utilization
    have = (f"{n}x {_gb(each)}{' unified (host RAM: NVML reports no framebuffer size)' if unified else ''} "
            f"x {t.gpu_memory_utilization:g} = {_gb(usable)} usable")
    parts = (f"checkpoint {t.checkpoint_gb:g} GB + KV {_gb(kv_gb(rules, t.max_model_len))} for "
             f"{t.max_model_len:,} tokens + {t.tensor_parallel_size}x {rules.memory.overhead_per_gpu_gb:g} GB overhead")
    if t.nodes == 1:
        if usable >= need:
            return passed(id_, f"{have} >= {_gb(need)} needed ({parts})")
        return failed(id_, f"{have} < {_gb(need)} needed ({parts})", _more_memory_fix(c, each, need))
    total = usable * t.nodes
    across = f"{t.nodes} nodes x {_gb(usable)} = {_gb(total)} usable vs {_gb(need)} needed ({parts})"
    if total < need:
        return failed(id_, f"{across}: not enough even across all nodes", _more_memory_fix(c, each, need))
    if t.unconfigured_nodes:
        return failed(id_, f"this node alone: {have} < {_gb(need)} needed ({parts}); the profile spreads over "
                           f"{t.nodes} nodes ({_gb(total)}), but {', '.join(t.unconfigured_nodes)} has no address yet",
                      "set the other node's address (--set multinode.nodes.1.address=IP, or in the workdir's "
                      "dsv4setup.yaml) and run `dsv4setup doctor` on that node too")
    return warned(id_, f"{across}, assuming the other node(s) match this one",
                  "run `dsv4setup doctor` on every node of the profile")


def _more_memory_fix(c: Ctx, each_gb: float, need_gb_total: float) -> str:
    """How many GPUs like these would fit, and which smaller context preset would, as concrete next steps."""
    t, rules = c.target, c.rules
    util = t.gpu_memory_utilization
    roads = []
    size = next((s for s in rules.tp_sizes if s > t.gpus_per_node
                 and each_gb * s * util >= need_gb(rules, t.checkpoint_gb, t.max_model_len, s)), None)
    if size is not None:
        more = size - len(visible_gpus(c.snap))
        extra = f": {more} more than this machine has" if more > 0 else ""
        roads.append(f"use {size} GPUs like these (TP={size}{extra}; a profile for {size} GPUs, "
                     f"`dsv4setup profile list`, or --set serve.tensor_parallel_size={size})")
    presets = t.profile.presets if t.profile is not None else {}
    smaller = sorted(((p.max_model_len, name) for name, p in presets.items() if p.max_model_len < t.max_model_len
                      and each_gb * len(c.group) * util >= need_gb(rules, t.checkpoint_gb, p.max_model_len,
                                                                   t.tensor_parallel_size)), reverse=True)
    if smaller:
        roads.append(f"a smaller context: --set preset={smaller[0][1]} ({smaller[0][0]:,} tokens fit these GPUs)")
    if roads:
        return "; or ".join(roads) + ", or GPUs with more memory"
    return (f"the checkpoint needs ~{_gb(need_gb_total)} of GPU memory: use bigger GPUs or more nodes "
            f"(e.g. 2x GB10 over QSFP, 2x H200, 2x RTX PRO 6000)")


def gpu_pcie_link(c: Ctx) -> Finding:
    id_ = "gpu.pcie_link"
    if (skip := _skip_gpu(c, id_)) is not None:
        return skip
    narrow = []
    known = []
    for g in c.group:
        p = g.get("pcie") or {}
        if p.get("width_max") and p.get("width_current"):
            known.append(g)
            if p["width_current"] < p["width_max"]:
                narrow.append(f"GPU {g['index']} runs x{p['width_current']} of x{p['width_max']}")
    if not known:
        return skipped(id_, "NVML reports no PCIe link for the TP GPUs (integrated or C2C-attached)")
    if narrow:
        return warned(id_, f"{'; '.join(narrow)}: host-device transfers and PCIe all-reduce slow down",
                      "reseat the card or move it to a full-width slot; check the BIOS slot bifurcation setting")
    g = known[0]["pcie"]
    return passed(id_, f"PCIe Gen{g.get('gen_max')} x{g.get('width_max')} at full width on the TP GPUs")


def _skip_topology(c: Ctx, id_: str) -> Finding | None:
    if (skip := _skip_gpu(c, id_)) is not None:
        return skip
    if not c.multi_gpu:
        if c.target.nodes > 1:
            return skipped(id_, f"one GPU per node: TP traffic goes over the network between {c.target.nodes} nodes")
        return skipped(id_, "one GPU: no GPU-to-GPU traffic")
    return None


def topology_interconnect(c: Ctx) -> Finding:
    id_ = "topology.interconnect"
    if (skip := _skip_topology(c, id_)) is not None:
        return skip
    ic = interconnect(c.snap, c.group)
    levels = sorted({str((entry or {}).get("topology", "unknown")) for _, _, entry in group_links(c.snap, c.group)})
    where = f"{ic} ({', '.join(levels)})"
    if ic == "nvlink":
        return passed(id_, f"NVLink between all TP GPUs: {where}")
    finding = c.rules.findings["pcie_custom_all_reduce"]
    if c.family == "sm12x" and ic == "pcie":
        if c.target.disable_custom_all_reduce:
            return passed(id_, f"PCIe only between SM {c.cc} GPUs: {where}; the profile disables custom all-reduce")
        return warned(id_, f"PCIe only between SM {c.cc} GPUs: {where}: {finding.why}",
                      "serve with --disable-custom-all-reduce (profile key serve.disable_custom_all_reduce: true); "
                      "it is in the recommendation")
    socket_note = "; crosses CPU sockets (SYS): keep the TP group under one socket if you can" \
        if "SYS" in levels else ""
    return passed(id_, f"{where}{socket_note}")


def _profile_disables_p2p(c: Ctx) -> bool:
    return c.target.disable_custom_all_reduce and c.target.env.get("NCCL_P2P_DISABLE") == "1"


def topology_p2p(c: Ctx) -> Finding:
    id_ = "topology.p2p"
    if (skip := _skip_topology(c, id_)) is not None:
        return skip
    problems = p2p_problems(c)
    unknown = [f"GPU {a}-{b}" for a, b, entry in group_links(c.snap, c.group)
               if entry is None or "unknown" in (entry.get("p2p_read"), entry.get("p2p_write"))]
    finding = c.rules.findings["p2p_unavailable"]
    if problems:
        summary = f"P2P unavailable: {'; '.join(problems)}"
        if _profile_disables_p2p(c):
            return passed(id_, f"{summary}; the profile already sets NCCL_P2P_DISABLE=1 and disables custom all-reduce")
        return warned(id_, f"{summary}: {finding.why}",
                      f"serve with NCCL_P2P_DISABLE=1 and --disable-custom-all-reduce (in the recommendation); "
                      f"to use P2P: {finding.advice}")
    if unknown:
        return warned(id_, f"NVML could not say whether P2P works between {', '.join(unknown)}",
                      "serve with VLLM_SKIP_P2P_CHECK=0 so vLLM tests P2P for real before using custom all-reduce")
    return passed(id_, "P2P read and write supported between all TP GPUs")


def topology_iommu(c: Ctx) -> Finding:
    id_ = "topology.iommu"
    if (skip := _skip_topology(c, id_)) is not None:
        return skip
    mode = c.host.get("iommu", "unknown")
    ic = interconnect(c.snap, c.group)
    finding = c.rules.findings["iommu_translated"]
    if mode == "translated":
        if ic == "nvlink":
            return passed(id_, "IOMMU translates DMA, but the TP GPUs talk over NVLink")
        if _profile_disables_p2p(c):
            return passed(id_, f"IOMMU translates DMA; the profile already sets NCCL_P2P_DISABLE=1 and disables "
                               f"custom all-reduce. To get P2P back: {finding.advice}")
        return warned(id_, f"IOMMU in translated mode with PCIe P2P between the TP GPUs: {finding.why}",
                      f"serve with NCCL_P2P_DISABLE=1 and --disable-custom-all-reduce (in the recommendation); "
                      f"to get P2P back: {finding.advice}")
    if mode == "unknown":
        return warned(id_, "IOMMU mode unknown (no /sys/class/iommu: a container?); translated IOMMUs hang NCCL "
                           "over PCIe P2P",
                      "check the host: `ls /sys/class/iommu` and iommu=pt in /proc/cmdline; if NCCL hangs after "
                      "init, serve with NCCL_P2P_DISABLE=1 and --disable-custom-all-reduce")
    return passed(id_, f"IOMMU {mode}: PCIe P2P is not translated")


def driver_present(c: Ctx) -> Finding:
    id_ = "driver.present"
    if c.target.cpu_only:
        return skipped(id_, CPU_ONLY.format(c.target.profile_name))
    driver = c.snap.get("driver")
    if driver is None:
        why = c.snap.get("nvml_error") or "NVML did not start"
        on_bus = c.host.get("nvidia_pci_gpus")
        seen = f" ({plural(on_bus, 'NVIDIA GPU')} on the PCI bus)" if on_bus else ""
        return failed(id_, f"no NVIDIA driver{seen}: {why}", no_gpu_fix(c.snap, c.rules))
    return passed(id_, f"NVIDIA driver {driver.get('version') or '?'} (CUDA {driver.get('cuda_driver') or '?'})")


def driver_version(c: Ctx) -> Finding:
    id_ = "driver.version"
    driver = c.snap.get("driver")
    if c.target.cpu_only:
        return skipped(id_, CPU_ONLY.format(c.target.profile_name))
    if driver is None:
        return skipped(id_, "no driver (see driver.present)")
    build = c.rules.driver_build(c.target.vllm_version)
    vllm = f"vLLM {c.target.vllm_version}" if c.target.vllm_version else "the default vLLM build"
    version, cuda = driver.get("version"), driver.get("cuda_driver")
    if not version:
        return warned(id_, "NVML reports no driver version", f"check `nvidia-smi`; {vllm} needs R{build.driver_min}+")
    have = f"driver {version} (CUDA {cuda or '?'})"
    too_old = vtuple(version)[:1] < vtuple(build.driver_min)[:1]
    cuda_old = cuda is not None and vtuple(cuda)[:2] < vtuple(build.cuda)[:2]
    if too_old or cuda_old:
        return failed(id_, f"{have} is too old: {build.why}",
                      f"{c.rules.driver_install_hint} (or pick an older vLLM build whose CUDA this driver runs)")
    return passed(id_, f"{have} >= R{build.driver_min} for {vllm} (CUDA {build.cuda} build)")


CHECKS = (gpu_present, gpu_architecture, gpu_identical, gpu_count, gpu_memory, gpu_pcie_link,
          topology_interconnect, topology_p2p, topology_iommu, driver_present, driver_version)
