"""Import a vllm-project/recipes model YAML as a dsv4setup profile for one hardware key.

The recipe's flags are collected in the order vLLM would see them (later wins, as the
recipes' own dedupe does): `model.base_args`, the tool-calling and reasoning features, the
MTP mode (`features.spec_decoding.modes.mtp.args`, or the older `features.spec_decoding.args`)
with its `hardware_overrides.<generation>` then `.<key>` args, then the top-level
`hardware_overrides.<generation>` then `.<key>` (`extra_args`, `extra_env`), then an optional
strategy. Flags with a profile field become that field; the rest go to `serve.extra_args`.
What the hardware cannot run is dropped, and dsv4setup's own facts for it are added; the
result says which is which.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import ValidationError

from dsv4setup.core.errors import UsageError
from dsv4setup.core.resources import package_file
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles import flags
from dsv4setup.profiles.loader import (
    ProfileError,
    dotted,
    read_yaml,
    shipped_profile_files,
    user_profiles_dir,
    validation_issues,
)
from dsv4setup.profiles.model import NAME_RE, Profile, VllmSpec

IMPORT_SCHEMA = "dsv4setup.profile-import/1"


@dataclass
class Applied:
    """One recipe section that contributed flags or env."""

    section: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RecipeImport:
    profile: Profile
    yaml_text: str
    applied: list[Applied]
    dropped: list[dict[str, str]]
    added: dict[str, Any]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"applied": [vars(a) for a in self.applied], "dropped": self.dropped, "added": self.added,
                "notes": self.notes}



@dataclass
class ImportedProfile:
    """`profile import-recipe`: the profile built, and the file it was written to (None: printed)."""

    result: RecipeImport
    target: Path | None

    def to_doc(self) -> dict[str, Any]:
        """The `dsv4setup.profile-import/1` document."""
        profile = self.result.profile
        return {"schema": IMPORT_SCHEMA, "ok": True, "name": profile.name,
                "out": str(self.target) if self.target else None, "profile": profile.document(),
                **self.result.to_dict()}


def import_recipe_to(workdir: Workdir, path: Path, hardware_key: str, *, out: str | None = None,
                     name: str | None = None, tp: int | None = None, strategy: str | None = None,
                     force: bool = False) -> ImportedProfile:
    """Build the profile and write it: to `out` ('-': nowhere, the caller prints it), by default into
    the workdir's profiles/NAME.yaml. A shipped profile's name and an existing file (without force) are refused."""
    from dsv4setup.core.fsutil import atomic_write_text

    result = import_recipe(path, hardware_key, name=name, tp=tp, strategy=strategy)
    profile = result.profile
    if profile.name in {p.stem for p in shipped_profile_files()}:
        raise UsageError(f"profile name {profile.name!r} is taken by a shipped profile", fix="pass --name NEW")
    target = None if out == "-" else Path(out) if out else user_profiles_dir(workdir) / f"{profile.name}.yaml"
    if target is not None:
        if target.exists() and not force:
            raise UsageError(f"{target} exists", fix="pass --force to overwrite it, or --out another file")
        atomic_write_text(target, result.yaml_text)
    return ImportedProfile(result, target)

def hardware_table() -> dict[str, Any]:
    table: dict[str, Any] = yaml.safe_load(package_file("profiles", "recipe_hardware.yaml").read_text(encoding="utf-8"))
    return table


def _hardware(key: str) -> dict[str, Any]:
    """The table entry of a hardware key, with the drop_args that apply to every key merged in."""
    table = hardware_table()
    if key in table.get("unsupported", []):
        raise UsageError(f"--hardware {key}: dsv4setup serves on NVIDIA GPUs only")
    if key not in table or key in ("unsupported", "any"):
        known = sorted(k for k in table if k not in ("unsupported", "any"))
        raise UsageError(f"--hardware {key}: unknown hardware key", fix=f"known keys: {', '.join(known)}")
    entry = dict(table[key])
    entry["drop_args"] = {**table.get("any", {}).get("drop_args", {}), **(entry.get("drop_args") or {})}
    return entry


def _section(recipe: dict[str, Any], *path: str) -> Any:
    node: Any = recipe
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _as_args(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(v, str | int | float | bool) for v in value):
        return [str(v) for v in value]
    raise UsageError(f"recipe {where}: expected a list of arguments")


def _as_env(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"recipe {where}: expected a mapping of environment variables")
    return {str(k): str(v) for k, v in value.items()}


def _collect(recipe: dict[str, Any], key: str, generation: str, strategy: str | None) -> list[Applied]:
    """The recipe sections that apply, in order."""
    mtp = "features.spec_decoding.modes.mtp" if _section(recipe, "features", "spec_decoding", "modes", "mtp") \
        else "features.spec_decoding"
    wanted: list[tuple[str, str]] = [
        ("model.base_args", "args"), ("model.base_env", "env"),
        ("features.tool_calling.args", "args"), ("features.reasoning.args", "args"),
        (f"{mtp}.args", "args"),
        *((f"{mtp}.hardware_overrides.{hw}.args", "args") for hw in dict.fromkeys((generation, key))),
    ]
    strategy_hw = _section(recipe, "strategy_overrides", strategy, "hardware_overrides") if strategy else None
    for hw in dict.fromkeys((generation, key)):
        base = f"strategy_overrides.{strategy}.hardware_overrides" if strategy_hw and hw in strategy_hw \
            else "hardware_overrides"  # a strategy's own override replaces the recipe-level one
        wanted += [(f"{base}.{hw}.extra_args", "args"), (f"{base}.{hw}.extra_env", "env")]
    if strategy:
        if _section(recipe, "strategy_overrides", strategy) is None:
            raise UsageError(f"--strategy {strategy}: the recipe has no strategy_overrides.{strategy}",
                             fix=f"strategies: {', '.join(recipe.get('strategy_overrides') or {}) or 'none'}")
        wanted += [(f"strategy_overrides.{strategy}.extra_args", "args"), (f"strategy_overrides.{strategy}.env", "env")]
    applied = []
    for where, kind in wanted:
        value = _section(recipe, *where.split("."))
        if value is None:
            continue
        applied.append(Applied(where, args=_as_args(value, where)) if kind == "args"
                       else Applied(where, env=_as_env(value, where)))
    return applied


def _field_value(flag: str, value: str | None, kind: str, section: str) -> Any:
    try:
        if kind == "bool":
            return value is None or value.lower() in ("1", "true", "yes")
        if value is None:
            raise ValueError("missing value")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "spec":
            config = json.loads(value)
            if config.get("method") not in ("mtp", "deepseek_mtp"):
                raise ValueError(f"method {config.get('method')!r}: dsv4setup runs MTP only")
            return int(config.get("num_speculative_tokens", 1))
        return value
    except (ValueError, json.JSONDecodeError, AttributeError) as exc:
        raise UsageError(f"recipe {section}: {flag} {value!r}: {exc}") from None


def _set(doc: dict[str, Any], dotted_key: str, value: Any) -> None:
    *parents, last = dotted_key.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


def _translate(applied: list[Applied], hardware: dict[str, Any],
               doc: dict[str, Any]) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """Recipe flags -> profile fields (in `doc`) and extra_args; returns (extra_args, dropped, notes)."""
    drop: dict[str, str] = hardware.get("drop_args") or {}
    extra: dict[str, list[str]] = {}
    dropped: list[dict[str, str]] = []
    notes: list[str] = []
    for part in applied:
        try:
            pairs = list(flags.pairs(part.args))
        except ValueError as exc:
            raise UsageError(f"recipe {part.section}: {exc}") from None
        for flag, value, tokens in pairs:
            shown = flag if value is None else f"{flag} {value}"
            base = flags.bool_base(flag)
            managed = flags.FIELD_FLAGS.get(flag) or flags.FIELD_FLAGS.get(base or "")
            if flag in drop:
                dropped.append({"arg": shown, "from": part.section, "reason": drop[flag]})
            elif flag in flags.RESERVED_FLAGS:
                dropped.append({"arg": shown, "from": part.section, "reason": flags.RESERVED_FLAGS[flag]})
            elif flag == "--max-model-len" and value == "auto":
                notes.append(f"{part.section}: --max-model-len auto left to vLLM (serve.max_model_len unset)")
            elif managed:
                key, kind = managed
                _set(doc, key, False if base else _field_value(flag, value, kind, part.section))
            else:
                extra.pop(flag, None)  # last wins, as in argparse and the recipes' dedupe
                extra[flag] = tokens
    return [token for tokens in extra.values() for token in tokens], dropped, notes


def _deep_update(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _vllm_version(recipe: dict[str, Any]) -> str:
    default = VllmSpec().version
    wanted = str(_section(recipe, "model", "min_vllm_version") or default)
    try:
        return wanted if Version(wanted) > Version(default) else default
    except InvalidVersion:
        return default


def _profile_name(recipe: dict[str, Any], key: str, name: str | None) -> str:
    if name:
        return name
    slug = _section(recipe, "meta", "slug") or str(_section(recipe, "model", "model_id") or "recipe").split("/")[-1]
    return re.sub(r"[^a-z0-9._-]+", "-", f"{slug}-{key}".lower()).strip("-")


def import_recipe(path: Path, hardware_key: str, *, name: str | None = None, tp: int | None = None,
                  strategy: str | None = None) -> RecipeImport:
    """Build a profile from a recipe file for one hardware key (see the module docstring)."""
    hardware = _hardware(hardware_key)
    recipe = read_yaml(path).data
    model_id = _section(recipe, "model", "model_id")
    if not isinstance(recipe, dict) or not isinstance(model_id, str):
        raise UsageError(f"{path}: not a vllm-project/recipes model file (no model.model_id)")
    generation = hardware["generation"]
    applied = _collect(recipe, hardware_key, generation, strategy)
    doc: dict[str, Any] = {"serve": {}}
    extra_args, dropped, notes = _translate(applied, hardware, doc)
    tp = tp or (_section(recipe, "strategy_overrides", strategy, "tp") if strategy else None) or hardware["gpus"]
    status = _section(recipe, "meta", "hardware", hardware_key)
    env: dict[str, str] = {}
    for part in applied:
        env.update(part.env)
    title = _section(recipe, "meta", "title") or model_id
    doc.update({
        "name": _profile_name(recipe, hardware_key, name),
        "description": (f"Imported from the vllm-project/recipes file {path.name} ({title}) for hardware "
                        f"{hardware_key} (generation {generation}), TP={tp}. The recipe marks {hardware_key} as "
                        f"{status or 'not listed'}; dsv4setup has not run this profile."),
        "verified": False,
        "source": f"vllm-project/recipes {path.name}: " + ", ".join(a.section for a in applied),
        "match": {**hardware["match"], "gpu_count": tp, "min_gpu_count": tp},
        "model": {"repo": model_id, "mtp": True},
        "toolkit": {"arch": hardware["toolkit_arch"]},
        "vllm": {"version": _vllm_version(recipe)},
        "env": env,
    })
    doc["serve"].update({"tensor_parallel_size": tp, "extra_args": extra_args})
    added = hardware.get("add") or {}
    _deep_update(doc, added)
    if status == "unsupported":
        notes.append(f"the recipe marks {hardware_key} as unsupported")
    if doc.get("spec") is None:
        notes.append("the recipe has no MTP speculative config: spec.num_speculative_tokens keeps its default")
    if not NAME_RE.match(doc["name"]):
        raise UsageError(f"--name {doc['name']!r}: use lower-case letters, digits, '.', '_' and '-'")
    return _finish(path, hardware_key, doc, applied, dropped, added, notes)


def _finish(path: Path, key: str, doc: dict[str, Any], applied: list[Applied], dropped: list[dict[str, str]],
            added: dict[str, Any], notes: list[str]) -> RecipeImport:
    try:
        profile = Profile.model_validate(doc)
    except ValidationError as exc:
        raise ProfileError(validation_issues(exc, lambda loc: f"{path} (imported, at {dotted(loc)})"),
                           fix="the recipe produced values dsv4setup cannot use; edit the recipe copy") from None
    body = {"schema": profile.schema_, **profile.model_dump(mode="json", by_alias=True, exclude_unset=True)}
    header = (f"# yaml-language-server: $schema=../dsv4setup/schemas/profile.schema.json\n"
              f"# Imported by `dsv4setup profile import-recipe {path.name} --hardware {key}`.\n"
              f"# Not verified: check it with `dsv4setup doctor` and `dsv4setup up --profile {profile.name}`.\n")
    text = header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)
    return RecipeImport(profile, text, applied, dropped, added, notes)
