"""The installer: pip's settings carried over to uv, the torch backend per profile, uv's own binary."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from tests.faults.tally import attack
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
    assert config.args == ("--constraint", "/etc/pip-constraints.txt", "--no-binary", ":none:",
                           "--index-strategy", "unsafe-best-match")
    assert config.env["UV_EXTRA_INDEX_URL"] == "file:///opt/pypi/simple file:///opt/pypi-more/simple"
    assert config.env["UV_FIND_LINKS"] == "/opt/wheels"
    assert config.env["UV_HTTP_TIMEOUT"] == "180"  # (/etc/pip.conf, always read by pip, may add a cert)
    assert config.not_carried == ("prefer-binary=yes",)
    assert "find-links=/opt/wheels -> UV_FIND_LINKS" in config.carried


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
    assert config.env["UV_EXTRA_INDEX_URL"] == "https://ci:s3cr3t-token@pypi.example/simple"  # uv's env, not argv
    assert not [a for a in config.args if "s3cr3t-token" in a or "t0ken-as-user" in a]
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


class _AuthIndex(BaseHTTPRequestHandler):
    """A loopback package index that answers only with the credential: /main/simple and /extra/simple
    (PEP 503 pages), /flat/ (a find-links page), /files/ (the wheels). Each package lives in one place."""

    credential = ""
    wheels: dict[str, Path] = {}
    places = {"main": "mainmod", "extra": "extramod"}
    seen: list[tuple[str, bool]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        expected = "Basic " + base64.b64encode(self.credential.encode()).decode()
        authorized = self.headers.get("Authorization") == expected
        self.seen.append((self.path, authorized))
        if not authorized:
            self._answer(401, b"", {"WWW-Authenticate": 'Basic realm="test"'})
            return
        parts = [p for p in self.path.split("/") if p]
        if parts[:1] == ["files"] and len(parts) == 2 and parts[1] in {w.name for w in self.wheels.values()}:
            self._answer(200, next(w for w in self.wheels.values() if w.name == parts[1]).read_bytes(),
                         {"Content-Type": "application/octet-stream"})
        elif len(parts) == 3 and parts[1] == "simple" and self.places.get(parts[0]) == parts[2]:
            self._links([self.wheels[parts[2]]])
        elif parts == ["flat"]:
            self._links([self.wheels["flatmod"]])
        else:
            self._answer(404, b"", {})

    def _links(self, wheels: list[Path]) -> None:
        body = "".join(f'<a href="/files/{w.name}">{w.name}</a>\n' for w in wheels)
        self._answer(200, f"<html><body>{body}</body></html>".encode(), {"Content-Type": "text/html"})

    def _answer(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # uv asks whether a wheel supports range requests

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
        return


@pytest.mark.security
def test_index_credentials_reach_the_real_uv_through_its_environment_never_its_argv_or_log(
        tmp_path: Path) -> None:
    """Issue 24: pip's index-url, extra-index-url and find-links may carry `user:token@`, and uv's argv is
    readable by any local user in /proc/PID/cmdline. A shim records the real uv's argv and environment
    (then execs it, so uv's cmdline is that argv); the index answers nothing without the credential, so
    the install proves uv received every location with its credential."""
    secret = f"s3cr3t-{os.getpid()}-{time.time_ns()}"
    local = tmp_path / "local"  # a second find-links entry: UV_FIND_LINKS separates them with commas
    wheels = {name: build_wheel(tmp_path / "wheels", name, "1.0", files={f"{name}/__init__.py": ""})
              for name in ("mainmod", "extramod", "flatmod")}
    build_wheel(local, "localmod", "1.0", files={"localmod/__init__.py": ""})
    handler = type("Index", (_AuthIndex,), {"credential": f"ci:{secret}", "wheels": wheels, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://ci:{secret}@127.0.0.1:{server.server_address[1]}"
    try:
        config = translate_pip_config({"index-url": f"{base}/main/simple", "extra-index-url": f"{base}/extra/simple",
                                       "find-links": f"{base}/flat/ {local}"})
        assert not [a for a in config.args if secret in a]
        assert config.env["UV_FIND_LINKS"] == f"{base}/flat/,{local}"
        real = Installer.choose("uv", Path(sys.executable))
        record = tmp_path / "uv-calls"
        shim = tmp_path / "uv"
        shim.write_text(f'#!/bin/sh\n{{ printf "argv:%s\\n" "$@"; env | grep "^UV_"; echo ---; }} >> {record}\n'
                        f'exec {real.uv} "$@"\n')
        shim.chmod(0o755)
        installer = replace(real, uv=shim, config=config)
        log = StepLog(tmp_path / "install.log")
        installer.report(log, lambda _line: None)
        python = installer.create_venv(Path(sys.executable), tmp_path / "venv", log)
        installer.install(python, ["mainmod", "extramod", "flatmod", "localmod"], None, log,
                          env={"UV_CACHE_DIR": str(tmp_path / "uv-cache")})
    finally:
        server.shutdown()
        server.server_close()
    site = next((tmp_path / "venv" / "lib").glob("python3.*/site-packages"))
    assert all((site / name / "__init__.py").is_file() for name in ("mainmod", "extramod", "flatmod", "localmod"))
    assert any(path.startswith("/files/") and ok for path, ok in handler.seen)  # served to uv with the credential
    calls = record.read_text()
    argv = [line for line in calls.splitlines() if line.startswith("argv:")]
    logged = log.path.read_text()
    leaked = [line for line in argv if secret in line] + ([log.path.name] if secret in logged else [])
    attack("files", "an index token from pip's settings, read from uv's argv (/proc/PID/cmdline) or the step log",
           got=f"{len(leaked)} places with the token", reached=bool(leaked))
    assert argv and not [line for line in argv if secret in line or "127.0.0.1" in line]
    assert f"UV_INDEX_URL={base}/main/simple" in calls and f"UV_EXTRA_INDEX_URL={base}/extra/simple" in calls
    assert secret not in logged
    assert "pip setting carried over to uv: extra-index-url=http://ci:***@127.0.0.1" in logged
    assert "-> UV_EXTRA_INDEX_URL" in logged and "-> UV_FIND_LINKS" in logged and "-> UV_INDEX_URL" in logged


def test_a_find_links_location_uv_cannot_take_from_its_environment_is_named_not_carried() -> None:
    config = translate_pip_config({"find-links": "/opt/wheels,old /srv/wheels", "index-url": "a b"})
    assert "UV_FIND_LINKS" not in config.env and "UV_INDEX_URL" not in config.env and config.args == ()
    assert config.not_carried == (
        "find-links=/opt/wheels,old /srv/wheels (uv reads it from UV_FIND_LINKS, where ',' separates the locations)",
        "index-url=a b (uv reads it from UV_INDEX_URL, where it takes one location)")
