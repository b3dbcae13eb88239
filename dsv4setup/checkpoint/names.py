"""On-disk tensor/module names -> vLLM runtime module names (pure; rules from lint_rules.yaml).

vLLM matches a quantization config's ignore list against the names of the modules it builds:
`model.layers.0.ffn.shared_experts.gate_up_proj`, not the checkpoint's
`layers.0.ffn.shared_experts.w1`. Runtime names are stable under vLLM's own name mapper, so a
list written in them works whatever the build does with on-disk names.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from dsv4setup.checkpoint.rules import LintRules, fill


@dataclass
class IgnoreFix:
    """Corrections of one quantization_config list (e.g. `ignore`)."""

    key: str
    original: list[str]
    corrected: list[str]
    changes: list[tuple[str, str]]  # (on-disk entry, runtime name)
    partial_groups: list[str] = field(default_factory=list)  # fused modules listed with only some shards

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "original": self.original, "corrected": self.corrected,
                "changes": [{"from": a, "to": b} for a, b in self.changes], "partial_groups": self.partial_groups}


def _apply_prefix(entry: str, rules: LintRules, num_hidden_layers: int | None) -> str:
    for rule in rules.runtime_names.prefixes:
        if "{i}" in rule.disk:
            pattern = "^" + re.escape(rule.disk).replace(re.escape("{i}"), r"(\d+)")
            match = re.match(pattern, entry)
            if match and num_hidden_layers is not None:
                i = int(match.group(1))
                return fill(rule.runtime, i, num_hidden_layers + i) + entry[match.end():]
        elif entry.startswith(rule.disk):
            return rule.runtime + entry[len(rule.disk):]
    return entry


def _replace_suffix(name: str, disk: str, runtime: str) -> str | None:
    if name == disk:
        return runtime
    if name.endswith("." + disk):
        return name[: -len(disk)] + runtime
    return None


def runtime_name(entry: str, rules: LintRules, num_hidden_layers: int | None) -> str:
    """The runtime module name for an ignore-list entry (unchanged when it already is one)."""
    if entry.startswith("re:"):
        return entry  # a regex: matched as written
    if entry in rules.runtime_names.exact:
        return rules.runtime_names.exact[entry]
    if "." not in entry:
        return entry  # a module class name (e.g. "Linear") or a root module
    name = _apply_prefix(entry, rules, num_hidden_layers)
    for rename in rules.runtime_names.renames:
        renamed = _replace_suffix(name, rename.disk, rename.runtime)
        if renamed is not None:
            return renamed
    for group in rules.runtime_names.fused:
        for part in group.parts:
            fused = _replace_suffix(name, part, group.runtime)
            if fused is not None:
                return fused
    return name


def _partial_groups(entries: list[str], rules: LintRules, num_hidden_layers: int | None) -> list[str]:
    """Fused runtime modules for which the list names only some of the on-disk shards."""
    seen: dict[str, tuple[set[str], set[str]]] = {}  # fused name -> (parts wanted, parts listed)
    for entry in entries:
        name = _apply_prefix(entry, rules, num_hidden_layers)
        for group in rules.runtime_names.fused:
            for part in group.parts:
                fused = _replace_suffix(name, part, group.runtime)
                if fused is not None:
                    seen.setdefault(fused, (set(group.parts), set()))[1].add(part)
    return sorted(name for name, (wanted, listed) in seen.items() if listed != wanted)


def ignore_fixes(config: dict[str, Any] | None, rules: LintRules) -> list[IgnoreFix]:
    """Every quantization_config list that holds on-disk names, with its corrected list."""
    quant = (config or {}).get("quantization_config")
    if not isinstance(quant, dict):
        return []
    layers = (config or {}).get("num_hidden_layers")
    layers = layers if isinstance(layers, int) else None
    fixes: list[IgnoreFix] = []
    for key in rules.ignore_keys:
        entries = quant.get(key)
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            continue
        corrected: list[str] = []
        changes: list[tuple[str, str]] = []
        for entry in entries:
            new = runtime_name(entry, rules, layers)
            if new != entry:
                changes.append((entry, new))
            if new not in corrected:
                corrected.append(new)
        if changes:
            fixes.append(IgnoreFix(key, list(entries), corrected, changes, _partial_groups(entries, rules, layers)))
    return fixes


def corrected_config(config: dict[str, Any], fixes: list[IgnoreFix]) -> dict[str, Any]:
    """A copy of config.json with each fixed list replaced (the original dict is not touched)."""
    new = copy.deepcopy(config)
    for fix in fixes:
        new["quantization_config"][fix.key] = list(fix.corrected)
    return new
