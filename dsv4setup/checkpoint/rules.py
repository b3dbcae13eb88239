"""The lint rules document (`lint_rules.yaml`): namings, dtype classes, vLLM feature gates."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from dsv4setup.core.yamlfast import safe_load

RULES_FILE = Path(__file__).with_name("lint_rules.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Naming(_Strict):
    layer_regex: str
    prefix: str
    runtime_prefix: str
    parts: list[str]  # modules every MTP layer must have; "a|b" = either
    own_head: list[str]
    head_norm: list[str]
    own_embed: list[str]
    target_head: list[str]
    target_embed: list[str]
    o_proj: list[str]

    @property
    def layer_re(self) -> re.Pattern[str]:
        return re.compile(self.layer_regex)


class DtypeClasses(_Strict):
    float: list[str]
    fp8: list[str]
    packed: list[str]
    scale_suffixes: list[str]


class Feature(_Strict):
    since: str
    what: str
    fix: str


class PrefixRule(_Strict):
    disk: str
    runtime: str


class FusedRule(_Strict):
    parts: list[str]
    runtime: str


class RuntimeNames(_Strict):
    prefixes: list[PrefixRule]
    exact: dict[str, str]
    fused: list[FusedRule]
    renames: list[PrefixRule]


class LintRules(_Strict):
    schema_: str
    pinned_vllm: str
    mtp_declared_keys: list[str]
    namings: dict[str, Naming]
    shares_target_head_and_embed_since: str
    dtypes: DtypeClasses
    vllm_features: dict[str, Feature]
    ignore_keys: list[str]
    runtime_names: RuntimeNames


def fill(template: str, i: int, layer: int) -> str:
    return template.replace("{i}", str(i)).replace("{L}", str(layer))


@lru_cache(maxsize=4)
def load_rules(path: Path = RULES_FILE) -> LintRules:
    data = safe_load(path.read_text(encoding="utf-8"))
    data["schema_"] = data.pop("schema")
    return LintRules.model_validate(data)


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric release parts: '0.33.0rc1+cu130' -> (0, 33, 0). Enough to order vLLM releases."""
    parts: list[int] = []
    for piece in re.split(r"[.+-]", version):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def has_feature(rules: LintRules, feature: str, vllm_version: str) -> bool:
    return version_tuple(vllm_version) >= version_tuple(rules.vllm_features[feature].since)
