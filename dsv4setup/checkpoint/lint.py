"""The checkpoint lint: pure checks over `CheckpointMeta`, same shape as doctor's checks.

Ids are `checkpoint.*`; status is pass|warn|fail|skip; `fix` says exactly what to do. The
silent MTP failures (stripped head, head not loaded, undeclared block, on-disk ignore names)
are all visible here, in a few MB of metadata, before 150 GB are downloaded or loaded.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dsv4setup.checkpoint.meta import INDEX_FILE, CheckpointMeta, TensorMeta
from dsv4setup.checkpoint.names import IgnoreFix, ignore_fixes
from dsv4setup.checkpoint.rules import LintRules, Naming, fill, has_feature, load_rules, version_tuple
from dsv4setup.core.finding import Finding as Check
from dsv4setup.core.finding import Status

VERIFY_FIX = "re-fetch and re-hash the files: dsv4setup download --verify"
NO_MTP_FIX = ("use a checkpoint that carries its MTP block (--set model.repo=ORG/NAME), or serve without "
              "speculative decoding: --set spec.num_speculative_tokens=0")
FIX_COPY = ("`dsv4setup checkpoint lint {target} --fix` writes a corrected config.json copy to "
            "<workdir>/checkpoint-config/ and serving passes --hf-config-path to it (the checkpoint step of "
            "`up` does this by itself); the downloaded files are never edited")
MTP_CHECK_IDS = ("checkpoint.mtp_declared", "checkpoint.mtp_tensors", "checkpoint.mtp_block", "checkpoint.mtp_head",
                 "checkpoint.mtp_dtypes")
MAX_LISTED = 5


@dataclass
class MtpLayer:
    index: int
    prefix: str
    tensors: list[str] = field(default_factory=list)


@dataclass
class MtpLayout:
    naming: str  # "native" or "hf"
    declared: int
    num_hidden_layers: int | None
    layers: dict[int, MtpLayer]
    orphaned: dict[str, int]  # shard not named by the index -> MTP tensors in it

    @property
    def tensor_count(self) -> int:
        return sum(len(layer.tensors) for layer in self.layers.values())

    def to_dict(self) -> dict[str, Any]:
        return {"naming": self.naming, "declared": self.declared, "present": sorted(self.layers),
                "tensors": self.tensor_count, "prefixes": [self.layers[i].prefix for i in sorted(self.layers)],
                "orphaned": self.orphaned}


@dataclass
class LintReport:
    source: str
    checks: list[Check]
    mtp: MtpLayout | None
    ignore_fixes: list[IgnoreFix]
    stats: dict[str, int]

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]


def _few(names: list[str] | set[str]) -> str:
    items = sorted(names)
    more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


# --- structure ------------------------------------------------------------------------------
def check_config(meta: CheckpointMeta) -> Check:
    if meta.config is None:
        return Check("checkpoint.config", "fail", meta.config_error or "config.json missing",
                     VERIFY_FIX if meta.kind == "local" else "choose a revision with a valid config.json")
    cfg = meta.config
    return Check("checkpoint.config", "pass",
                 f"config.json: model_type {cfg.get('model_type')}, {cfg.get('num_hidden_layers')} layers, "
                 f"architectures {cfg.get('architectures')}")


def check_index(meta: CheckpointMeta) -> Check:
    if meta.index_error:
        return Check("checkpoint.index", "fail", meta.index_error,
                     VERIFY_FIX if meta.kind == "local" else "choose a revision whose index parses")
    if not meta.index:
        return Check("checkpoint.index", "pass", "single-file checkpoint (model.safetensors, no index)")
    assert meta.weight_map is not None
    return Check("checkpoint.index", "pass",
                 f"{INDEX_FILE}: {len(meta.weight_map)} tensors in {len(meta.listed)} shards")


def check_shards(meta: CheckpointMeta) -> Check:
    if not meta.listed:
        return Check("checkpoint.shards", "skip", "no shard list (see checkpoint.index)")
    missing = [n for n in meta.listed if not meta.shards[n].exists]
    if missing:
        return Check("checkpoint.shards", "fail",
                     f"{len(missing)} of {len(meta.listed)} shards named by the index are missing: {_few(missing)}",
                     VERIFY_FIX if meta.kind == "local" else "the repo is incomplete at this revision: pick another "
                     "revision (--set model.revision=SHA) or another repo")
    total = sum(meta.shards[n].size or 0 for n in meta.listed)
    return Check("checkpoint.shards", "pass", f"all {len(meta.listed)} shards present ({_gb(total)})")


def check_headers(meta: CheckpointMeta) -> Check:
    present = [meta.shards[n] for n in meta.listed if meta.shards[n].exists]
    if not present:
        return Check("checkpoint.headers", "skip", "no shard to read")
    bad = {s.name: s.error for s in present if s.error}
    if bad:
        first = next(iter(bad))
        return Check("checkpoint.headers", "fail",
                     f"{len(bad)} shard header(s) unusable: {first}: {bad[first]}"
                     + (f" (and {_few(list(bad)[1:])})" if len(bad) > 1 else ""),
                     VERIFY_FIX if meta.kind == "local" else "the hub copy is damaged: pick another revision")
    tensors = sum(len(s.tensors) for s in present)
    header = sum(s.header_bytes for s in present)
    data = sum(s.size or 0 for s in present)
    return Check("checkpoint.headers", "pass",
                 f"{len(present)} headers parse: {tensors} tensors, {_gb(header)} of headers for {_gb(data)}")


def check_duplicates(meta: CheckpointMeta) -> Check:
    problems: list[str] = []
    if meta.index_duplicates:
        problems.append(f"listed twice in the index: {_few(meta.index_duplicates)}")
    in_header = {n: s.duplicates for n, s in meta.shards.items() if s.duplicates}
    for shard, names in in_header.items():
        problems.append(f"written twice in the header of {shard}: {_few(names)}")
    twice = {t: shards for t, shards in meta.loaded_tensors().items() if len(shards) > 1}
    if twice:
        problems.append(f"{len(twice)} tensor(s) in more than one shard, e.g. "
                        + "; ".join(f"{t} in {', '.join(s)}" for t, s in list(twice.items())[:3]))
    if problems:
        return Check("checkpoint.duplicates", "fail", "; ".join(problems),
                     "vLLM would load such a tensor twice, the last copy wins: the checkpoint is inconsistent; "
                     "use a clean copy (" + (VERIFY_FIX if meta.kind == "local" else "another revision") + ")")
    return Check("checkpoint.duplicates", "pass", "no tensor is listed twice")


def check_weight_map(meta: CheckpointMeta) -> Check:
    if not meta.index or meta.weight_map is None:
        return Check("checkpoint.weight_map", "skip", "no index to compare with the shard headers")
    readable = [n for n in meta.listed if meta.shards[n].exists and not meta.shards[n].error]
    if len(readable) != len(meta.listed):
        return Check("checkpoint.weight_map", "skip", "some shards are missing or unreadable (see above)")
    loaded = meta.loaded_tensors()
    absent = [t for t in meta.weight_map if t not in loaded]
    if absent:
        return Check("checkpoint.weight_map", "fail",
                     f"{len(absent)} tensor(s) named by the index are in no shard: {_few(absent)}",
                     VERIFY_FIX if meta.kind == "local" else "the repo is inconsistent at this revision")
    misplaced = [t for t, shard in meta.weight_map.items() if shard not in loaded[t]]
    unindexed = [t for t in loaded if t not in meta.weight_map]
    notes = []
    if misplaced:
        notes.append(f"{len(misplaced)} tensor(s) sit in another shard than the index says: {_few(misplaced)}")
    if unindexed:
        notes.append(f"{len(unindexed)} tensor(s) in the shards are not in the index: {_few(unindexed)}")
    if meta.orphans:
        notes.append(f"{len(meta.orphans)} .safetensors file(s) not named by the index (vLLM skips them): "
                     f"{_few(meta.orphans)}")
    if notes:
        return Check("checkpoint.weight_map", "warn", "; ".join(notes),
                     "vLLM loads every tensor of the files the index names and no other file; transformers "
                     "follows the index: ask the publisher for a consistent index")
    return Check("checkpoint.weight_map", "pass", f"index and shard headers agree on {len(loaded)} tensors")


# --- MTP ------------------------------------------------------------------------------------
def _declared(meta: CheckpointMeta, rules: LintRules) -> int:
    for key in rules.mtp_declared_keys:
        value = (meta.config or {}).get(key)
        if isinstance(value, int):
            return value
    return 0


def _tensor_names(meta: CheckpointMeta) -> list[str]:
    """What vLLM would load; the index's names when headers could not be read."""
    loaded = meta.loaded_tensors()
    return list(loaded) if loaded else list(meta.weight_map or {})


def _find_layers(names: list[str], naming: Naming, n_layers: int | None) -> dict[int, MtpLayer]:
    layers: dict[int, MtpLayer] = {}
    regex = naming.layer_re
    for name in names:
        match = regex.match(name)
        if not match:
            continue
        groups = match.groupdict()
        if groups.get("i") is not None:
            i = int(groups["i"])
        elif n_layers is not None and int(groups["layer"]) >= n_layers:
            i = int(groups["layer"]) - n_layers
        else:
            continue
        layer_no = (n_layers or 0) + i
        layer = layers.setdefault(i, MtpLayer(i, fill(naming.prefix, i, layer_no)))
        layer.tensors.append(name)
    return layers


def mtp_layout(meta: CheckpointMeta, rules: LintRules) -> MtpLayout:
    n_layers = (meta.config or {}).get("num_hidden_layers")
    n_layers = n_layers if isinstance(n_layers, int) else None
    names = _tensor_names(meta)
    found = {key: _find_layers(names, naming, n_layers) for key, naming in rules.namings.items()}
    naming = next((k for k, layers in found.items() if layers), None)
    if naming is None:
        naming = "native" if any(n.startswith("layers.") for n in names) else "hf"
    orphaned: dict[str, int] = {}
    for shard in meta.orphans:
        count = sum(len(layer.tensors) for layer in
                    _find_layers(list(meta.shards[shard].tensors), rules.namings[naming], n_layers).values())
        if count:
            orphaned[shard] = count
    return MtpLayout(naming, _declared(meta, rules), n_layers, found[naming], orphaned)


def check_mtp_declared(layout: MtpLayout, expect_mtp: bool) -> Check:
    if layout.declared >= 1:
        return Check("checkpoint.mtp_declared", "pass",
                     f"config.json declares {layout.declared} MTP layer(s) (num_nextn_predict_layers)")
    if expect_mtp:
        return Check("checkpoint.mtp_declared", "fail",
                     "config.json declares no MTP layer (num_nextn_predict_layers is 0 or absent): vLLM builds no "
                     "draft, `--speculative-config mtp` cannot run", NO_MTP_FIX)
    return Check("checkpoint.mtp_declared", "skip", "no MTP layer declared, and the profile does not use MTP")


def check_mtp_tensors(layout: MtpLayout, expect_mtp: bool) -> Check:
    present = sorted(layout.layers)
    where = ", ".join(f"{layout.layers[i].prefix}* ({len(layout.layers[i].tensors)})" for i in present)
    orphan_note = ""
    if layout.orphaned:
        orphan_note = (f"; {sum(layout.orphaned.values())} MTP tensor(s) sit in "
                       f"{_few(list(layout.orphaned))}, which the index does not name: vLLM never loads them")
    if layout.declared >= 1:
        absent = [i for i in range(layout.declared) if i not in layout.layers]
        if absent:
            status: Status = "fail" if expect_mtp else "warn"
            return Check("checkpoint.mtp_tensors", status,
                         f"config.json declares {layout.declared} MTP layer(s) but the weights of layer(s) "
                         f"{absent} are absent" + ("" if layout.orphaned else " (quantized checkpoints often strip "
                         "them)") + ": vLLM fails at load with 'MTP speculative decoding layer ... weights missing' "
                         "or MTP is a silent no-op"
                         + orphan_note,
                         "list the orphaned file in the index weight_map (ask the publisher)" if layout.orphaned
                         else NO_MTP_FIX)
        extra = [i for i in present if i >= layout.declared]
        summary = f"{layout.tensor_count} MTP tensors ({layout.naming} naming): {where}"
        if extra:
            return Check("checkpoint.mtp_tensors", "warn",
                         summary + f"; layer(s) {extra} are not declared and are ignored",
                         "nothing to do unless the extra layers were meant to be used")
        return Check("checkpoint.mtp_tensors", "pass", summary)
    if present:
        status = "fail" if expect_mtp else "warn"
        return Check("checkpoint.mtp_tensors", status,
                     f"{layout.tensor_count} MTP tensors are present ({where}) but config.json declares no MTP "
                     "layer: vLLM builds no draft and MTP is silently off",
                     "use a checkpoint whose config.json declares its MTP block "
                     f"(num_nextn_predict_layers: {len(present)}), or serve without MTP: "
                     "--set spec.num_speculative_tokens=0")
    if expect_mtp:
        return Check("checkpoint.mtp_tensors", "fail", "no MTP tensors (no mtp.* / model.layers.N.* weights)"
                     + orphan_note, NO_MTP_FIX)
    return Check("checkpoint.mtp_tensors", "skip", "no MTP tensors, none expected")


def _first_present(templates: list[str], names: set[str], i: int, layer_no: int) -> str | None:
    return next((fill(t, i, layer_no) for t in templates if fill(t, i, layer_no) in names), None)


def check_mtp_head(layout: MtpLayout, names: set[str], rules: LintRules, vllm_version: str,
                   tied: bool = False) -> Check:
    """The draft's head, head norm and token embedding: its own, or the target's (tied: embed = head)."""
    if not layout.layers:
        return Check("checkpoint.mtp_head", "skip", "no MTP layer present")
    naming = rules.namings[layout.naming]
    shares = version_tuple(vllm_version) >= version_tuple(rules.shares_target_head_and_embed_since)
    problems: list[str] = []
    parts: list[str] = []
    for i in sorted(layout.layers):
        layer_no = (layout.num_hidden_layers or 0) + i
        own_head = _first_present(naming.own_head, names, i, layer_no)
        own_embed = _first_present(naming.own_embed, names, i, layer_no)
        norm = _first_present(naming.head_norm, names, i, layer_no)
        target_embed = next((t for t in naming.target_embed if t in names), None)
        target_head = next((t for t in naming.target_head if t in names), target_embed if tied else None)
        if norm is None:
            problems.append(f"layer {i}: no head norm ({fill(naming.head_norm[0], i, layer_no)}): the draft's "
                            "logits would use an uninitialised norm (0 % acceptance, no error)")
        head = _reach("head", own_head, target_head, shares)
        embed = _reach("embedding", own_embed, target_embed, shares)
        if head is None:
            problems.append(f"layer {i}: no head (neither {naming.own_head[0]} nor the target's "
                            f"{' / '.join(naming.target_head)})")
        if embed is None:
            problems.append(f"layer {i}: no token embedding (neither its own nor the target's)")
        parts.append(f"layer {i}: head {head or 'MISSING'}; embedding {embed or 'MISSING'}")
    if problems:
        return Check("checkpoint.mtp_head", "fail", "; ".join(problems),
                     "the draft cannot produce tokens: use a checkpoint with the complete MTP block")
    note = "" if shares else (f" (vLLM {vllm_version} may not share the target's head/embedding with the draft: "
                              "own copies are safer)")
    return Check("checkpoint.mtp_head", "pass", "; ".join(parts) + note)


def _reach(what: str, own: str | None, target: str | None, shares: bool) -> str | None:
    if own and target and shares:
        return f"shared with the target's {target} (vLLM replaces the draft's own {own} with it)"
    if own:
        return f"own ({own})"
    if target:
        return f"shared with the target's {target}"
    return None


def check_mtp_block(layout: MtpLayout, rules: LintRules) -> Check:
    if not layout.layers:
        return Check("checkpoint.mtp_block", "skip", "no MTP layer present")
    naming = rules.namings[layout.naming]
    missing: list[str] = []
    for _, layer in sorted(layout.layers.items()):
        for part in naming.parts:
            options = part.split("|")
            if not any(t.startswith(f"{layer.prefix}{opt}.") for t in layer.tensors for opt in options):
                missing.append(f"{layer.prefix}{part}")
    if missing:
        return Check("checkpoint.mtp_block", "fail", f"incomplete MTP block, missing: {_few(missing)}",
                     "vLLM would leave these draft modules uninitialised: use a checkpoint with a complete MTP block")
    return Check("checkpoint.mtp_block", "pass",
                 f"MTP block complete ({', '.join(p.replace('|', '/') for p in naming.parts)})")


@dataclass
class LinearKind:
    module: str
    kind: str  # float | fp8 | packed
    dtype: str
    scale: str | None


def linear_kinds(tensors: dict[str, TensorMeta], names: list[str], rules: LintRules) -> list[LinearKind]:
    """Classify every linear module (2-D weight, or packed weight) among `names`."""
    by_module: dict[str, dict[str, TensorMeta]] = {}
    for name in names:
        module, _, leaf = name.rpartition(".")
        if module and name in tensors:
            by_module.setdefault(module, {})[leaf] = tensors[name]
    kinds: list[LinearKind] = []
    d = rules.dtypes
    for module, leaves in sorted(by_module.items()):
        scale = next((s for s in d.scale_suffixes if s in leaves), None)
        if "weight_packed" in leaves or "qweight" in leaves:
            packed = leaves.get("weight_packed") or leaves["qweight"]
            kinds.append(LinearKind(module, "packed", packed.dtype, scale))
            continue
        weight = leaves.get("weight")
        if weight is None or len(weight.shape) != 2:
            continue
        if weight.dtype in d.fp8:
            kinds.append(LinearKind(module, "fp8", weight.dtype, scale))
        elif weight.dtype in d.packed:
            kinds.append(LinearKind(module, "packed", weight.dtype, scale))
        else:
            kinds.append(LinearKind(module, "float", weight.dtype, None))
    return kinds


def check_mtp_dtypes(layout: MtpLayout, tensors: dict[str, TensorMeta], rules: LintRules,
                     vllm_version: str) -> Check:
    if not layout.layers:
        return Check("checkpoint.mtp_dtypes", "skip", "no MTP layer present")
    naming = rules.namings[layout.naming]
    kinds = [k for layer in layout.layers.values() for k in linear_kinds(tensors, layer.tensors, rules)]
    if not kinds:
        return Check("checkpoint.mtp_dtypes", "skip", "no shard headers to read dtypes from")
    counts = Counter(f"{k.dtype}" + (f"+{k.scale}" if k.scale and k.kind != "float" else "") for k in kinds)
    summary = f"MTP linear modules by dtype: {', '.join(f'{n} {c}' for c, n in counts.most_common())}"
    problems: list[str] = []
    fixes: list[str] = []
    unscaled = [k.module for k in kinds if k.kind == "fp8" and k.scale is None]
    if unscaled:
        problems.append(f"FP8 weights without a scale tensor: {_few(unscaled)}")
        fixes.append("the checkpoint is broken (FP8 weights need their scales): use another one")
    feats = rules.vllm_features
    bf16_o = [k.module for k in kinds if k.kind == "float" and any(
        re.search(rf"\.{re.escape(o)}$", k.module) for o in naming.o_proj)]
    if bf16_o:
        if has_feature(rules, "bf16_o_proj", vllm_version):
            summary += f"; BF16 wo_a ({len(bf16_o)}): vLLM {vllm_version} takes the dtype-gated BF16 O-proj path"
        else:
            problems.append(f"BF16 wo_a in the MTP block ({_few(bf16_o)}) but vLLM {vllm_version} predates "
                            f"{feats['bf16_o_proj'].what}")
            fixes.append(feats["bf16_o_proj"].fix)
    named_scale = [k.module for k in kinds if k.kind == "fp8" and k.scale == "weight_scale"]
    if named_scale and not has_feature(rules, "scale_name_fallback", vllm_version):
        problems.append(f"FP8 scales named weight_scale ({_few(named_scale)}) but vLLM {vllm_version} predates "
                        f"{feats['scale_name_fallback'].what}")
        fixes.append(feats["scale_name_fallback"].fix)
    quant_proj = [k.module for k in kinds if k.kind != "float" and k.module.rsplit(".", 1)[-1] in ("e_proj", "h_proj")]
    if quant_proj and not has_feature(rules, "mtp_proj_prefix", vllm_version):
        problems.append(f"quantized MTP projections ({_few(quant_proj)}) but vLLM {vllm_version} predates "
                        f"{feats['mtp_proj_prefix'].what}")
        fixes.append(feats["mtp_proj_prefix"].fix)
    if problems:
        return Check("checkpoint.mtp_dtypes", "fail", summary + "; " + "; ".join(problems), "; ".join(fixes))
    return Check("checkpoint.mtp_dtypes", "pass", summary + f" (all handled by vLLM {vllm_version})")


def check_quant_ignore(meta: CheckpointMeta, fixes: list[IgnoreFix], target: str) -> Check:
    quant = (meta.config or {}).get("quantization_config")
    if not isinstance(quant, dict):
        return Check("checkpoint.quant_ignore", "skip", "no quantization_config")
    if not fixes:
        return Check("checkpoint.quant_ignore", "pass",
                     f"quantization_config ({quant.get('quant_method', '?')}): ignore lists use runtime module names")
    parts = []
    for fix in fixes:
        example = "; ".join(f"{a} -> {b}" for a, b in fix.changes[:3])
        parts.append(f"quantization_config.{fix.key}: {len(fix.changes)} of {len(fix.original)} entries are on-disk "
                     f"tensor names, not the runtime module names vLLM matches ({example}"
                     f"{', ...' if len(fix.changes) > 3 else ''}); corrected list: {fix.corrected}")
        if fix.partial_groups:
            parts.append(f"only some shards of fused module(s) {_few(fix.partial_groups)} are listed: vLLM needs "
                         "all shards of a fused module in one scheme, the corrected list ignores the whole module")
    return Check("checkpoint.quant_ignore", "warn",
                 "; ".join(parts) + " (a vLLM build that does not translate them fails at load with "
                 "'Unable to find matching target for ...', as reported for such artifacts)",
                 FIX_COPY.format(target=target))


def lint(meta: CheckpointMeta, *, rules: LintRules | None = None, vllm_version: str | None = None,
         expect_mtp: bool = True, target: str | None = None) -> LintReport:
    """Every check over one checkpoint's metadata. Pure: no I/O."""
    rules = rules or load_rules()
    vllm_version = vllm_version or rules.pinned_vllm
    checks = [check_config(meta), check_index(meta), check_shards(meta), check_headers(meta),
              check_duplicates(meta), check_weight_map(meta)]
    tensors: dict[str, TensorMeta] = {}
    for name in meta.listed:
        tensors.update(meta.shards[name].tensors if name in meta.shards else {})
    names = _tensor_names(meta)
    layout = mtp_layout(meta, rules) if meta.config is not None and names else None
    if layout is not None:
        checks += [check_mtp_declared(layout, expect_mtp), check_mtp_tensors(layout, expect_mtp),
                   check_mtp_block(layout, rules),
                   check_mtp_head(layout, set(names), rules, vllm_version,
                                  tied=(meta.config or {}).get("tie_word_embeddings") is True),
                   check_mtp_dtypes(layout, tensors, rules, vllm_version)]
    else:
        why = "no config.json" if meta.config is None else "no tensor names (no readable index or shard header)"
        checks += [Check(cid, "skip", f"cannot judge the MTP block: {why}") for cid in MTP_CHECK_IDS]
    fixes = ignore_fixes(meta.config, rules)
    checks.append(check_quant_ignore(meta, fixes, target or meta.source))
    stats = {"shards": len(meta.listed), "tensors": len(tensors),
             "header_bytes": sum(s.header_bytes for s in meta.shards.values()),
             "weight_bytes": sum(meta.shards[n].size or 0 for n in meta.listed if n in meta.shards)}
    return LintReport(meta.source, checks, layout, fixes, stats)
