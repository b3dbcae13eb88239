"""The vllm step through the engine.

Wheel route: a real venv and the real uv (and pip, the fallback route) on tiny local wheels.
Git and source routes: real git on a local repository, the vLLM build itself replaced by the
recording fake pip (helpers.py) on the pip route, since neither a precompiled-wheel build nor
a CUDA build can run on CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from uv import find_uv_bin

from dsv4setup.core.state import load_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Observer, Runbook, Selection, Step, UpResult
from dsv4setup.profiles.model import ModelSpec, Profile, VllmSpec
from dsv4setup.toolkit.outputs import ToolkitOutputs
from dsv4setup.vllm.build import BuildMachine
from dsv4setup.vllm.installer import FREEZE_FILE
from dsv4setup.vllm.step import CONSTRAINTS_FILE, VllmStep
from tests.core.steps_for_tests import StandInStep
from tests.vllm.helpers import pip_calls, tiny_vllm_repo

TINY = {"package": "tinyvllm", "version": "0.1.0", "pip_constraints": ["tinyvision==1.0"],
        "remove_after_install": ["tinyvision"]}


def make_profile(**vllm: Any) -> Profile:
    return Profile(name="vllm-test", description="vllm step test", source="tests",
                   model=ModelSpec(local_path="/nonexistent"), vllm=VllmSpec(**{**TINY, **vllm}))


def pip_profile(**vllm: Any) -> Profile:
    """The pip route: the git and source tests record pip's calls with the fake pip."""
    return make_profile(installer="pip", **vllm)


class Progress(Observer):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def progress(self, step: Step, message: str) -> None:
        self.messages.append(message)


def up(workdir: Workdir, profile: Profile, *, toolkit: ToolkitOutputs | None = None,
       machine: BuildMachine | None = None, observer: Observer | None = None) -> UpResult:
    steps: list[Step] = [StandInStep(toolkit)] if toolkit is not None else []
    return Runbook([*steps, VllmStep(machine)], workdir, profile).up(Selection(), observer)


def outputs(workdir: Workdir) -> dict[str, Any]:
    return load_state(workdir.state_file).steps["vllm"].outputs


def venv_pip(workdir: Workdir, *args: str) -> str:
    return subprocess.run([str(workdir.venv_python), "-m", "pip", *args], capture_output=True, text=True,
                          check=True).stdout


def uv_install(workdir: Workdir, wheels: Path, requirement: str) -> None:
    """What a user's `uv pip install` into the serving venv does (a uv-made venv has no pip)."""
    subprocess.run([find_uv_bin(), "pip", "install", "-q", "--python", str(workdir.venv_python), "--no-index",
                    "--find-links", str(wheels), requirement], check=True)


# --- wheel route: real venv, real uv and pip ---------------------------------------------------------

def test_wheel_route_installs_with_uv_constraints_then_removes_for_real(workdir: Workdir, offline_pip: Path) -> None:
    progress = Progress()
    result = up(workdir, make_profile(), observer=progress)
    assert result.ok, result.error
    out = outputs(workdir)
    site = Path(out["site_packages"])
    assert out["python"] == str(workdir.venv_python) and out["package"] == "tinyvllm" and out["version"] == "0.1.0"
    assert out["route"] == "wheel" and out["vllm_dir"] == str(site / "vllm") and site.is_relative_to(workdir.venv_dir)
    assert out["installer"]["name"] == "uv" and out["installer"]["torch_backend"] == "cu130"  # toolkit.version 13.0.2
    assert f"find-links={offline_pip} -> UV_FIND_LINKS" in out["installer"]["pip_config_carried"]
    assert (workdir.venv_dir / CONSTRAINTS_FILE).read_text() == "tinyvision==1.0\n"
    log = workdir.log_file("vllm").read_text()
    assert f" pip install --python {workdir.venv_python} " in log and "--no-index" in log
    assert f"pip setting carried over to uv: find-links={offline_pip} -> UV_FIND_LINKS" in log
    assert "--find-links" not in log  # a location reaches uv through its environment (it may carry a credential)
    assert f"--torch-backend cu130 -c {workdir.venv_dir / CONSTRAINTS_FILE} tinyvllm==0.1.0" in log
    assert "+ tinyvision==1.0" in log  # the constraint chose 1.0 over 2.0
    assert f" pip uninstall --python {workdir.venv_python} tinyvision" in log
    frozen = (workdir.venv_dir / FREEZE_FILE).read_text().splitlines()
    assert frozen == ["tinyvllm==0.1.0"] and out["freeze_file"] == str(workdir.venv_dir / FREEZE_FILE)
    assert any(m.startswith("pip settings carried over to uv: ") for m in progress.messages)
    again = up(workdir, make_profile())
    assert again.decisions[0].action == "skip" and again.decisions[0].reason.endswith(
        f"tinyvllm 0.1.0 in {workdir.venv_dir}; as frozen in {FREEZE_FILE}, files as in RECORD")


def test_a_file_edited_in_place_reaches_uv_cache_and_the_reinstall_says_so(
        workdir: Workdir, offline_pip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uv hard-links its cache into the venv: an in-place edit changes the cached file too, so a plain
    reinstall brings the edit back. The RECORD check catches it and names the cure."""
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))  # this test spoils its own cache only
    profile = make_profile(remove_after_install=[])
    assert up(workdir, profile).ok
    init = Path(outputs(workdir)["vllm_dir"]) / "__init__.py"
    with init.open("a") as fh:
        fh.write("# edited in place\n")
    failed = up(workdir, profile)
    assert not failed.ok and failed.error is not None
    assert failed.error.message == (f"after installing: {init} differs from tinyvllm's RECORD "
                                    f"(changed after the install)")
    clean = f"{find_uv_bin()} cache clean tinyvllm"
    assert f"`{clean}`" in (failed.error.fix or "")
    subprocess.run(clean.split(), check=True, capture_output=True)
    assert up(workdir, profile).ok and init.read_text() == "__version__ = '0.1.0'\n"


def test_wheel_route_on_the_pip_fallback_route_for_real(workdir: Workdir, offline_pip: Path) -> None:
    profile = make_profile(installer="pip")
    result = up(workdir, profile)
    assert result.ok, result.error
    assert outputs(workdir)["installer"] == {"name": "pip", "why": "pip, as asked (--installer pip or vllm.installer: "
                                                                   "pip)", "torch_backend": None,
                                             "pip_config_carried": [], "pip_config_not_carried": []}
    log = workdir.log_file("vllm").read_text()
    assert f"-m pip install -c {workdir.venv_dir / CONSTRAINTS_FILE} tinyvllm==0.1.0" in log
    assert "-m pip uninstall -y tinyvision" in log
    assert "tinyvision" not in venv_pip(workdir, "list")
    assert "tinyvllm==0.1.0" in (workdir.venv_dir / FREEZE_FILE).read_text().splitlines()
    assert up(workdir, profile).decisions[0].action == "skip"


def test_a_changed_file_of_the_package_or_a_package_outside_the_freeze_is_drift(
        workdir: Workdir, offline_pip: Path) -> None:
    assert up(workdir, make_profile(remove_after_install=[])).ok
    init = Path(outputs(workdir)["vllm_dir"]) / "__init__.py"
    edited = init.with_name("edited.py")  # a new file renamed over it: uv hard-links its cache into the venv
    edited.write_text("__version__ = '0.1.0'  # edited by hand\n")
    edited.replace(init)
    plan = Runbook([VllmStep()], workdir, make_profile(remove_after_install=[])).plan(Selection())
    assert plan[0].reason == f"drift: {init} differs from tinyvllm's RECORD (changed after the install)"
    assert up(workdir, make_profile(remove_after_install=[])).ok  # reinstalled: the wheel's file is back
    assert init.read_text() == "__version__ = '0.1.0'\n"
    site = Path(outputs(workdir)["site_packages"])
    (site / "stray-1.0.dist-info").mkdir()
    plan = Runbook([VllmStep()], workdir, make_profile(remove_after_install=[])).plan(Selection())
    assert plan[0].reason == f"drift: installed since {FREEZE_FILE} was written: stray"


def test_reinstalled_removed_package_is_drift_and_removed_again(workdir: Workdir, offline_pip: Path) -> None:
    assert up(workdir, make_profile()).ok
    uv_install(workdir, offline_pip, "tinyvision==2.0")
    plan = Runbook([VllmStep()], workdir, make_profile()).plan(Selection())
    assert plan[0].reason == "drift: tinyvision installed again (the profile removes them after install)"
    assert up(workdir, make_profile()).ok
    assert (workdir.venv_dir / FREEZE_FILE).read_text() == "tinyvllm==0.1.0\n"


def test_wrong_installed_version_is_drift(workdir: Workdir, offline_pip: Path) -> None:
    assert up(workdir, make_profile(remove_after_install=[])).ok
    uv_install(workdir, offline_pip, "tinyvision==2.0")
    plan = Runbook([VllmStep()], workdir, make_profile(remove_after_install=[])).plan(Selection())
    assert plan[0].reason == "drift: tinyvision is 2.0, the profile pins 1.0"


def test_missing_version_is_a_resolution_failure_with_hint(workdir: Workdir, offline_pip: Path) -> None:
    result = up(workdir, make_profile(version="9.9"))
    assert not result.ok and result.error is not None
    assert result.error.message.startswith("uv install tinyvllm==9.9: no distribution found for tinyvllm==9.9")
    assert "PIP_FIND_LINKS" in (result.error.fix or "")


def test_contradicting_pins_are_a_conflict_with_hint(workdir: Workdir, offline_pip: Path) -> None:
    result = up(workdir, make_profile(pip_constraints=["tinyvision==0.5"]))
    assert not result.ok and result.error is not None
    assert "no consistent set of versions could be resolved" in result.error.message
    assert "vllm.pip_constraints" in (result.error.fix or "")


def test_missing_python_fails_with_hint(workdir: Workdir) -> None:
    result = up(workdir, make_profile(python="/nonexistent/python3.11"))
    assert not result.ok and result.error is not None
    assert result.error.message == "python interpreter /nonexistent/python3.11 does not run"
    assert "vllm.python" in (result.error.fix or "")


def test_python_without_venv_module_fails_with_hint_with_fake_python(workdir: Workdir, tmp_path: Path) -> None:
    """Debian's python without python3-venv cannot be made from a full python: a fake plays it."""
    fake = tmp_path / "python3.11"
    fake.write_text(f"""#!{sys.executable}
import os, sys
if "ensurepip" in " ".join(sys.argv[1:]):
    sys.exit("ModuleNotFoundError: No module named 'ensurepip'")
os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])
""")
    fake.chmod(0o755)
    result = up(workdir, make_profile(python=str(fake), installer="pip"))  # uv makes venvs without ensurepip
    assert not result.ok and result.error is not None
    assert "has no working venv module (ensurepip missing)" in result.error.message
    assert "No module named 'ensurepip'" in result.error.message
    expected = f"python{sys.version_info.major}.{sys.version_info.minor}-venv"
    assert expected in (result.error.fix or "")
    assert not workdir.venv_dir.exists()


# --- git route: real git, recording fake pip (the pip route) ----------------------------------------

@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "upstream"
    return path, tiny_vllm_repo(path)


def precompiled(tmp_path: Path, version: str) -> Path:
    wheel = tmp_path / "wheels" / f"vllm-{version}-cp38-abi3-manylinux_2_28_x86_64.whl"
    wheel.parent.mkdir(exist_ok=True)
    wheel.write_bytes(b"stands for the release wheel")
    return wheel


def test_git_route_with_real_git_and_recording_fake_pip(workdir: Workdir, fake_pip: Path, tmp_path: Path,
                                                        repo: tuple[Path, dict[str, str]]) -> None:
    url, commits = repo
    wheel = precompiled(tmp_path, "0.1.0")
    result = up(workdir, pip_profile(source="git", git_url=str(url), git_ref="v0.1.0",
                                             precompiled_wheel=str(wheel)))
    assert result.ok, result.error
    src = workdir.root / "src" / "vllm"
    install, uninstall, freeze = pip_calls(fake_pip)
    assert install["argv"] == ["install", "-c", str(workdir.venv_dir / CONSTRAINTS_FILE), "-e", str(src)]
    assert install["constraints"] == "tinyvision==1.0\n" and install["cwd"] == str(src)
    env = install["env"]
    assert isinstance(env, dict)
    assert env["VLLM_USE_PRECOMPILED"] == "1" and env["VLLM_PRECOMPILED_WHEEL_LOCATION"] == str(wheel)
    assert env["TORCH_CUDA_ARCH_LIST"] is None and env["MAX_JOBS"] is None
    assert uninstall["argv"] == ["uninstall", "-y", "tinyvision"] and freeze["argv"] == ["freeze", "--all"]
    out = outputs(workdir)
    assert out["git_commit"] == commits["v0.1.0"] and out["version"] == "0.1.0"
    assert out["vllm_dir"] == str(src / "vllm") and out["route"] == "git"
    # a new ref (a bare commit) moves the managed checkout and reinstalls
    moved = up(workdir, pip_profile(source="git", git_url=str(url), git_ref=commits["next"], version="0.2.0",
                                            precompiled_wheel=str(precompiled(tmp_path, "0.2.0"))))
    assert moved.ok, moved.error
    assert outputs(workdir)["git_commit"] == commits["next"] and outputs(workdir)["version"] == "0.2.0"
    assert (src / "VERSION").read_text().strip() == "0.2.0"


def test_git_route_refuses_without_precompiled_wheel(workdir: Workdir, fake_pip: Path,
                                                    repo: tuple[Path, dict[str, str]]) -> None:
    result = up(workdir, pip_profile(source="git", git_url=str(repo[0]), git_ref="v0.1.0"))
    assert not result.ok and result.error is not None
    assert "refusing to let vLLM pick a nightly wheel" in result.error.message
    assert "vllm.precompiled_wheel" in (result.error.fix or "")
    assert not workdir.venv_dir.exists() and not (workdir.root / "src").exists() and pip_calls(fake_pip) == []


def test_git_route_refuses_a_wheel_of_another_release(workdir: Workdir, fake_pip: Path, tmp_path: Path,
                                                     repo: tuple[Path, dict[str, str]]) -> None:
    result = up(workdir, pip_profile(source="git", git_url=str(repo[0]), git_ref="v0.1.0",
                                      precompiled_wheel=str(precompiled(tmp_path, "0.2.0"))))
    assert not result.ok and result.error is not None
    assert result.error.message == "vllm.precompiled_wheel is vLLM 0.2.0 but vllm.version is 0.1.0"


def test_git_ref_building_another_version_fails_with_hint(workdir: Workdir, fake_pip: Path, tmp_path: Path,
                                                          repo: tuple[Path, dict[str, str]]) -> None:
    result = up(workdir, pip_profile(source="git", git_url=str(repo[0]), git_ref="v0.1.0", version="0.2.0",
                                             precompiled_wheel=str(precompiled(tmp_path, "0.2.0"))))
    assert not result.ok and result.error is not None
    assert result.error.message == "after installing: tinyvllm is 0.1.0, the profile wants 0.2.0"
    assert "set vllm.version" in (result.error.fix or "")


# --- source route: real git, recording fake pip (the pip route) -------------------------------------

def test_source_build_env_and_progress_with_recording_fake_pip(workdir: Workdir, fake_pip: Path,
                                                               tmp_path: Path,
                                                               repo: tuple[Path, dict[str, str]]) -> None:
    cuda = tmp_path / "toolkit" / "cu13"
    toolkit = ToolkitOutputs(cuda_home=str(cuda), nvcc=str(cuda / "bin" / "nvcc"), arch="sm_121a", version="13.0.2",
                             release="13.0.2", route="conda")
    progress = Progress()
    result = up(workdir, pip_profile(source="source", git_url=str(repo[0])), toolkit=toolkit,
                machine=BuildMachine(cores=96, ram_gb=512), observer=progress)
    assert result.ok, result.error
    install = pip_calls(fake_pip)[0]
    env = install["env"]
    assert isinstance(env, dict)
    assert {k: env[k] for k in ("CUDA_HOME", "CUDACXX", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "NVCC_THREADS",
                                "VLLM_TARGET_DEVICE", "VLLM_USE_PRECOMPILED")} == {
        "CUDA_HOME": str(cuda), "CUDACXX": str(cuda / "bin" / "nvcc"), "TORCH_CUDA_ARCH_LIST": "12.1a",
        "MAX_JOBS": "64", "NVCC_THREADS": "1", "VLLM_TARGET_DEVICE": "cuda", "VLLM_USE_PRECOMPILED": None}
    assert str(env["PATH"]).startswith(f"{cuda / 'bin'}:")
    out = outputs(workdir)
    assert out["route"] == "source" and out["git_commit"] == repo[1]["v0.1.0"]  # default ref: v<version>
    assert "building vLLM kernels: 4/4 (100%)" in progress.messages
    assert any(m.startswith("building vLLM from source for 12.1a (MAX_JOBS=64") for m in progress.messages)
    log = workdir.log_file("vllm").read_text()
    assert "[3/4] Building CUDA object csrc/k3.cu.o" in log
    assert "build environment: CUDA_HOME=" in log and "MAX_JOBS=64 NVCC_THREADS=1" in log


def test_source_build_with_two_arches_on_a_small_machine_with_recording_fake_pip(
        workdir: Workdir, fake_pip: Path, tmp_path: Path, repo: tuple[Path, dict[str, str]]) -> None:
    toolkit = ToolkitOutputs(cuda_home=str(tmp_path), nvcc=str(tmp_path / "bin" / "nvcc"), arch="sm_120a",
                             version="13.0.2", release="13.0.2", route="conda")
    result = up(workdir, pip_profile(source="source", git_url=str(repo[0]), torch_arch_list="12.0a;12.1a"),
                toolkit=toolkit, machine=BuildMachine(cores=16, ram_gb=30))
    assert result.ok, result.error
    env = pip_calls(fake_pip)[0]["env"]
    assert isinstance(env, dict)
    assert (env["TORCH_CUDA_ARCH_LIST"], env["MAX_JOBS"], env["NVCC_THREADS"]) == ("12.0a;12.1a", "3", "2")


def test_source_route_without_toolkit_outputs_fails_with_hint(workdir: Workdir, fake_pip: Path,
                                                             repo: tuple[Path, dict[str, str]]) -> None:
    result = up(workdir, pip_profile(source="source", git_url=str(repo[0])))
    assert not result.ok and result.error is not None
    assert "no CUDA_HOME to build with" in result.error.message
    assert "--only toolkit" in (result.error.fix or "") and pip_calls(fake_pip) == []


@pytest.mark.parametrize("field", ["git_url", "git_ref"])
def test_a_git_url_or_ref_that_looks_like_an_option_is_never_one(workdir: Workdir, fake_pip: Path,
                                                                 tmp_path: Path, repo: tuple[Path, dict[str, str]],
                                                                 field: str) -> None:
    """Real git: `--upload-pack=CMD` as the URL or ref would run CMD if git took it for an option."""
    pwned = tmp_path / "pwned"
    values = {"git_url": str(repo[0]), "git_ref": "v0.1.0", field: f"--upload-pack=touch {pwned}"}
    result = up(workdir, pip_profile(source="git", precompiled_wheel=str(precompiled(tmp_path, "0.1.0")),
                                           **values))
    assert not result.ok and result.error is not None
    assert not pwned.exists()
