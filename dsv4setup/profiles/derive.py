"""Profiles for supported GPUs that no shipped profile names, derived from the GPU family's shipped one.

Pure functions of a hardware snapshot, the shipped base profiles' documents and the doctor's
rules: the family comes from the compute capability (rules.yaml `architectures`); model, vLLM
build, patches, serve flags and env come from the family's shipped profile (derive.yaml);
TP is the smallest power of two whose GPUs fit the weights plus the KV cache of the default
context preset, else of the largest smaller preset that fits; k is the family's safe value.
What the interconnect and IOMMU imply is added at serve time from the doctor's findings, as for
shipped profiles. A derived profile is `derived: true`, `verified: false`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from dsv4setup.core.yamlfast import safe_load
from dsv4setup.hardware.facts import Gpu, Snapshot, cc_str, interconnect, memory_bytes, visible_gpus
from dsv4setup.hardware.memory import need_gb, usable_gb
from dsv4setup.hardware.rules import GB, Rules
from dsv4setup.profiles.model import Profile

DATA_FILE = Path(__file__).with_name("derive.yaml")


@dataclass(frozen=True)
class ContextPreset:
    name: str
    max_model_len: int
    max_num_seqs: int


@dataclass(frozen=True)
class Family:
    base: str  # the shipped profile a derived one takes its settings from
    label: str


@dataclass(frozen=True)
class DeriveData:
    families: dict[str, Family]
    default_preset: str
    presets: tuple[ContextPreset, ...]  # largest first
    name_prefix: str

    def presets_from_default(self) -> list[ContextPreset]:
        """The default preset and every smaller one, largest first."""
        names = [p.name for p in self.presets]
        return list(self.presets[names.index(self.default_preset):])


@cache
def load_derive_data(path: Path = DATA_FILE) -> DeriveData:
    raw = safe_load(path.read_text(encoding="utf-8"))
    presets = tuple(ContextPreset(str(name), int(p["max_model_len"]), int(p["max_num_seqs"]))
                    for name, p in raw["presets"].items())
    return DeriveData({name: Family(f["base"], f["label"]) for name, f in raw["families"].items()},
                      str(raw["default_preset"]), presets, str(raw["name_prefix"]))


def is_derived_name(name: str) -> bool:
    return name.startswith(load_derive_data().name_prefix)


@dataclass(frozen=True)
class Fit:
    tp: int
    preset: ContextPreset
    fits: bool


@dataclass(frozen=True)
class Derivation:
    """A derived profile (None: nothing to derive from) and, when none, why."""

    profile: Profile | None
    document: dict[str, Any] | None  # the profile as its file holds it (the preset not applied to serve)
    fits: bool
    notes: tuple[str, ...] = ()
    why_not: str | None = None


def choose_fit(snap: Snapshot, gpus: list[Gpu], checkpoint_gb: float, utilization: float, rules: Rules,
               data: DeriveData) -> Fit:
    """The default preset at the smallest power-of-two TP that fits, else the largest smaller preset that
    fits; nothing fits: the default preset at the largest TP this node allows (fits False)."""
    sizes = [s for s in rules.tp_sizes if s <= len(gpus)] or [1]
    for preset in data.presets_from_default():
        for tp in sizes:
            usable = usable_gb(snap, gpus[:tp], utilization, rules)
            if usable is not None and usable >= need_gb(rules, checkpoint_gb, preset.max_model_len, tp):
                return Fit(tp, preset, True)
    default = data.presets_from_default()[0]
    return Fit(sizes[-1], default, False)


def gpus_needed(each_gb: float, checkpoint_gb: float, utilization: float, max_model_len: int,
                rules: Rules) -> int | None:
    """The smallest TP size whose GPUs of `each_gb` fit this context; None: not even the largest."""
    return next((size for size in rules.tp_sizes
                 if each_gb * size * utilization >= need_gb(rules, checkpoint_gb, max_model_len, size)), None)


def slug(gpu_name: str) -> str:
    """'NVIDIA H100 PCIe' -> 'h100-pcie'."""
    name = re.sub(r"^nvidia\s+", "", gpu_name.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def _not_derivable(why: str) -> Derivation:
    return Derivation(None, None, False, why_not=why)


def derive_profile(snap: Snapshot, bases: Mapping[str, dict[str, Any]], rules: Rules,
                   data: DeriveData | None = None) -> Derivation:
    """A profile for the visible GPUs from their family's shipped profile (`bases`: name -> file document)."""
    data = data or load_derive_data()
    gpus = visible_gpus(snap)
    if not gpus:
        return _not_derivable("no NVIDIA GPU visible" + ("" if snap.get("driver") else " (NVML did not start)"))
    first = gpus[0]
    cc = cc_str(first)
    family = rules.family(cc)
    if cc is None or family is None or family not in data.families:
        known = ", ".join(f.label for f in data.families.values())
        return _not_derivable(f"SM {cc or '?'} ({first.get('name') or '?'}) is not a supported GPU family "
                              f"({known})")
    same = [g for g in gpus if g.get("name") == first.get("name") and cc_str(g) == cc]
    fam = data.families[family]
    base = bases[fam.base]
    checkpoint_gb = float(base["model"]["expected_size_gb"])
    utilization = float((base.get("serve") or {}).get("gpu_memory_utilization")
                        or rules.memory.default_gpu_memory_utilization)
    fit = choose_fit(snap, same, checkpoint_gb, utilization, rules, data)
    spec_family = rules.spec_families.get(family)
    k = spec_family.default if spec_family is not None else rules.spec_default
    notes = _notes(snap, same, fam, fit, checkpoint_gb, utilization, rules, data, len(gpus))
    doc = _document(snap, same, base, fam, fit, k, utilization, data, notes, rules.host_arches)
    return Derivation(Profile.model_validate(doc).with_preset(), doc, fit.fits, tuple(notes))


def _notes(snap: Snapshot, gpus: list[Gpu], fam: Family, fit: Fit, checkpoint_gb: float, utilization: float,
           rules: Rules, data: DeriveData, visible: int) -> list[str]:
    mem = memory_bytes(snap, gpus[0], rules.memory.unified_memory_uses_host_ram)[0]
    each = mem / GB if mem is not None else None
    size = f"{each:.1f} GB" if each is not None else "unknown memory"
    notes = [f"derived from the shipped {fam.base} profile ({fam.label}): its model, vLLM build, patches, flags "
             f"and env; not verified on this hardware"]
    default = data.presets_from_default()[0]
    if each is None:
        notes.append(f"NVML reports no memory size: TP={fit.tp} and the {fit.preset.name} context are guesses")
    elif not fit.fits:
        need = gpus_needed(each, checkpoint_gb, utilization, default.max_model_len, rules)
        smallest = data.presets[-1]
        more = (f"{need} GPUs like these (TP={need}; {need - len(gpus)} more than this machine has) fit the "
                f"{default.name} context" if need else f"no {rules.tp_sizes[-1]} GPUs of {size} fit the checkpoint")
        notes.append(f"nothing fits: {len(gpus)}x {size} hold neither the {default.name} context nor the smallest "
                     f"preset ({smallest.name}) next to {checkpoint_gb:g} GB of weights; {more}")
    else:
        notes.append(f"TP={fit.tp}: the smallest power of two whose GPUs ({fit.tp}x {size} x {utilization:g}) fit "
                     f"{checkpoint_gb:g} GB of weights + the KV cache of the {fit.preset.name} context")
        if fit.preset != default:
            need = gpus_needed(each, checkpoint_gb, utilization, default.max_model_len, rules)
            notes.append(f"only a smaller context fits: {fit.preset.name} instead of {default.name}"
                         + (f" ({default.name} needs {need} GPUs like these)" if need else ""))
    if fit.tp < visible and fit.fits:
        notes.append(f"{visible - fit.tp} of {visible} GPUs unused: run another server on them (own workdir, "
                     f"CUDA_VISIBLE_DEVICES and serve.port)")
    return notes


def _document(snap: Snapshot, gpus: list[Gpu], base: dict[str, Any], fam: Family, fit: Fit, k: int,
              utilization: float, data: DeriveData, notes: list[str], arches: tuple[str, ...]) -> dict[str, Any]:
    from dsv4setup.hardware.arch import arch_from_capability, torch_arch_list

    name = str(gpus[0].get("name") or "")
    cc = cc_str(gpus[0])
    arch = arch_from_capability(cc)
    host_arch = (snap.get("host") or {}).get("arch")
    group = gpus[:fit.tp]
    doc = copy.deepcopy(dict(base))
    doc.pop("multinode", None)
    doc.update({
        "name": f"{data.name_prefix}{slug(name)}-tp{fit.tp}",
        "description": f"{fit.tp}x {name} (SM {cc}), TP={fit.tp}, derived by dsv4setup for a machine no shipped "
                       f"profile names. " + "; ".join(notes) + ".",
        "verified": False,
        "derived": True,
        "source": f"derived from {fam.base} (dsv4setup/profiles/derive.yaml); that profile's source: "
                  f"{base.get('source')}",
        "match": {"gpu_name": f"^{re.escape(name)}$", "compute_capability": [cc], "gpu_count": fit.tp,
                  "min_gpu_count": fit.tp, "interconnect": interconnect(snap, group) if fit.tp > 1 else "any",
                  "arch": host_arch if host_arch in arches else "any"},
        "toolkit": {**(doc.get("toolkit") or {}), "arch": arch},
        "vllm": {**(doc.get("vllm") or {}), "torch_arch_list": torch_arch_list(arch)},
        "spec": {**(doc.get("spec") or {}), "num_speculative_tokens": k},
        "presets": {p.name: {"max_model_len": p.max_model_len, "max_num_seqs": p.max_num_seqs}
                    for p in data.presets},
        "preset": fit.preset.name,
    })
    serve = {key: value for key, value in (doc.get("serve") or {}).items()
             if key not in ("max_model_len", "max_num_seqs", "gpu_memory_utilization")}
    doc["serve"] = {**serve, "tensor_parallel_size": fit.tp, "gpu_memory_utilization": utilization}
    first = ("schema", "name", "description", "verified", "derived", "source")
    return {**{key: doc[key] for key in first if key in doc}, **doc}


def base_documents() -> dict[str, dict[str, Any]]:
    """The shipped base profiles of every family, as their files hold them."""
    from dsv4setup.profiles.loader import find_profile_file, profile_data, read_yaml

    return {fam.base: profile_data(read_yaml(find_profile_file(fam.base)))
            for fam in load_derive_data().families.values()}


def derive_for(snap: Snapshot) -> Derivation:
    """derive_profile with the shipped base profiles and rules.yaml."""
    from dsv4setup.hardware.rules import load_rules

    return derive_profile(snap, base_documents(), load_rules())


DERIVED_SCHEMA = "dsv4setup.profile-derived/1"


def derived_doc(derivation: Derivation) -> dict[str, Any]:
    """The `dsv4setup.profile-derived/1` document: the profile to save, and how it was derived."""
    profile = derivation.profile
    return {"schema": DERIVED_SCHEMA, "name": profile.name if profile else None, "derived": True, "verified": False,
            "fits": derivation.fits, "notes": list(derivation.notes), "why_not": derivation.why_not,
            "profile": derivation.document}


def derived_yaml(derivation: Derivation) -> str:
    """The derived profile as a profile file: save it, edit it, pass it back with --profile FILE."""
    assert derivation.document is not None
    header = ["# Derived by `dsv4setup profile show --derived` for this machine; not verified on this hardware.",
              *(f"# - {note}" for note in derivation.notes),
              "# Save it (e.g. as mine.yaml), edit it, then: dsv4setup up --profile ./mine.yaml"]
    body = yaml.safe_dump(derivation.document, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(header) + "\n" + body
