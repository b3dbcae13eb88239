"""The installer: pip's settings carried over to uv, the torch backend per profile, uv's own binary."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from dsv4setup.core.errors import StepError
from dsv4setup.core.proc import StepLog
from dsv4setup.core.secrets import redact
from dsv4setup.profiles.loader import load_all_profiles
from dsv4setup.profiles.model import ModelSpec, Profile, ToolkitSpec, VllmSpec
from dsv4setup.vllm.installer import (
    Installer,
    PipConfig,
    find_uv,
    pip_config_values,
    read_pip_config,
    torch_backend,
    translate_pip_config,
    uv_compiles_bytecode,
)
from tests.vllm.helpers import build_wheel


def test_pip_config_precedence_env_over_install_over_global() -> None:
    values = pip_config_values(["global.find-links='/opt/wheels'", "install.find-links='/srv/wheels'",
                                ":env:.find-links='/tmp/w'", "global.index-url='https://mirror.example/simple'",
                                "download.no-index='1'", "not a config line"])
    assert values == {"find-links": "/tmp/w", "index-url": "https://mirror.example/simple"}


def test_real_pip_config_reaches_uv_and_what_does_not_is_named(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's own layout: find-links, two file:// extra indexes, a global constraints file."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /opt/wheels\nextra-index-url = file:///opt/pypi/simple "
                    "file:///opt/pypi-more/simple\nconstraint = /etc/pip-constraints.txt\n"
                    "disable-pip-version-check = 1\nno-binary = :none:\n[install]\nprefer-binary = yes\n")
    for name in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "180")
    config = read_pip_config(Path(sys.executable))
    assert config.args == ("--constraint", "/etc/pip-constraints.txt",
                           "--extra-index-url", "file:///opt/pypi/simple",
                           "--extra-index-url", "file:///opt/pypi-more/simple",
                           "--find-links", "/opt/wheels", "--no-binary", ":none:",
                           "--index-strategy", "unsafe-best-match")
    assert config.env["UV_HTTP_TIMEOUT"] == "180"  # (/etc/pip.conf, always read by pip, may add a cert)
    assert config.not_carried == ("prefer-binary=yes",)
    assert "find-links=/opt/wheels -> --find-links" in config.carried


def test_unreadable_pip_config_is_reported_not_guessed(tmp_path: Path) -> None:
    config = read_pip_config(tmp_path / "no-python")
    assert config.args == () and config.not_carried[0].startswith("pip's configuration (")


def gpu_profile(**vllm: object) -> Profile:
    return Profile(name="gpu", description="d", source="s", model=ModelSpec(local_path="/x"),
                   toolkit=ToolkitSpec(version="13.0.2"), vllm=VllmSpec(**vllm))  # type: ignore[arg-type]


def test_torch_backend_matches_the_profiles_cuda_and_auto_only_when_asked() -> None:
    assert torch_backend(gpu_profile()) == "cu130"
    assert torch_backend(gpu_profile(torch_backend="auto")) == "auto"
    assert torch_backend(gpu_profile(pip_constraints=["torch==2.13.0+cpu"])) is None  # the pinned build decides
    assert torch_backend(gpu_profile(pip_constraints=["torch==2.10.0"])) == "cu130"
    shipped = {p.name: p for p in load_all_profiles()}
    assert torch_backend(shipped["cpu-tiny"]) is None  # CPU: the pinned +cpu torch from the machine's indexes
    assert torch_backend(shipped["h200-tp2"]) == "cu130"
    no_cuda = Profile(name="gpu", description="d", source="s", model=ModelSpec(local_path="/x"),
                      toolkit=ToolkitSpec(version=None))
    with pytest.raises(StepError, match="names no CUDA release for torch"):
        torch_backend(no_cuda)


def test_the_bundled_uv_runs_and_pip_is_chosen_only_when_asked() -> None:
    uv, version = find_uv()
    assert uv is not None and version.startswith("uv ")
    assert Installer.choose("auto", Path(sys.executable)).name == "uv"
    assert Installer.choose("pip", Path(sys.executable)).name == "pip"


def test_unknown_installer_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "dsv4setup", "up", "--workdir", str(tmp_path), "--installer",
                             "conda", "--dry-run"], capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 2 and "--installer conda: expected auto, uv, pip" in result.stderr, result.stderr


def test_auto_falls_back_to_pip_when_uv_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A uv binary that fails to start (a broken install) stands in for one that cannot run here."""
    import uv

    broken = tmp_path / "uv"
    broken.write_text("#!/bin/sh\necho 'uv: cannot execute on this CPU' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(uv, "find_uv_bin", lambda: str(broken))
    fallback = Installer.choose("auto", Path(sys.executable))
    assert fallback.name == "pip"
    assert fallback.why == f"pip, because uv cannot run: {broken} --version failed: uv: cannot execute on this CPU"
    with pytest.raises(StepError, match="the installer uv is asked for but cannot run"):
        Installer.choose("uv", Path(sys.executable))


def test_index_credentials_in_pip_settings_never_reach_the_report() -> None:
    config = translate_pip_config({"extra-index-url": "https://ci:s3cr3t-token@pypi.example/simple",
                                   "index-url": "https://t0ken-as-user@mirror.example/simple"})
    assert "--extra-index-url" in config.args  # uv still gets the URL (argv and logs are redacted)
    shown = " ".join([*config.carried, *config.not_carried])
    assert "s3cr3t-token" not in shown and "t0ken-as-user" not in shown and "***@pypi.example" in shown
    assert "s3cr3t-token" not in redact("$ uv pip install --extra-index-url https://ci:s3cr3t-token@pypi.example")


@pytest.mark.parametrize(("dont_write", "pip_settings", "compiled"), [
    ("1", {}, True), ("", {}, False), ("1", {"no-compile": "1"}, False)])
def test_uv_writes_bytecode_at_install_where_python_will_not_at_run_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dont_write: str, pip_settings: dict[str, str],
        compiled: bool) -> None:
    """Real uv into a real venv. Under PYTHONDONTWRITEBYTECODE the .pyc files are there after the install, so
    vLLM's processes import them instead of compiling the sources every time; elsewhere the first start writes
    them and the install stays fast; pip's `no-compile` is honoured."""
    wheel = build_wheel(tmp_path / "wheels", "tinymod", "1.0", files={"tinymod/__init__.py": "VALUE = 1\n"})
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", dont_write)
    config = translate_pip_config(pip_settings)
    assert uv_compiles_bytecode(config, os.environ) is compiled and PipConfig().compile_bytecode
    installer = replace(Installer.choose("uv", Path(sys.executable)), config=config,
                        compile_bytecode=uv_compiles_bytecode(config, os.environ))
    log = StepLog(tmp_path / "install.log")
    installer.report(log, lambda _line: None)
    python = installer.create_venv(Path(sys.executable), tmp_path / "venv", log)
    installer.install(python, [str(wheel)], None, log)
    site = next((tmp_path / "venv" / "lib").glob("python3.*/site-packages"))
    assert (site / "tinymod" / "__init__.py").is_file()
    assert bool(list((site / "tinymod" / "__pycache__").glob("__init__.*.pyc"))) is compiled
    assert ("--compile-bytecode" in log.path.read_text()) is compiled


def test_the_installer_chosen_under_pythondontwritebytecode_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert Installer.choose("uv", Path(sys.executable)).compile_bytecode
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE")
    assert not Installer.choose("uv", Path(sys.executable)).compile_bytecode
