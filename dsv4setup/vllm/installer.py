"""What installs packages into the venvs dsv4setup makes: uv, or pip as the fallback route.

uv is a dependency of dsv4setup (its PyPI wheel carries the binary, found with
`uv.find_uv_bin()`), so nothing is downloaded at run time. pip is used when asked
(`--installer pip`, `vllm.installer: pip`) or when uv cannot run. Both routes get the same
requirements and constraints and write into the same step log.

uv does not read pip's configuration. The settings that decide where packages come from
(find-links, extra indexes, a global constraints file, ...) are read with `pip config list`
and passed to uv as options; every setting is reported as carried over or not. The index and
find-links locations go through uv's environment (UV_INDEX_URL, UV_EXTRA_INDEX_URL, UV_FIND_LINKS),
never its argv: they may carry `user:token@`, and any local user reads argv in /proc/PID/cmdline.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from dsv4setup.core.errors import StepError
from dsv4setup.core.proc import StepLog, run_logged
from dsv4setup.core.secrets import redact, register_secret
from dsv4setup.hardware.arch import parse_release
from dsv4setup.profiles.model import Profile
from dsv4setup.vllm.build import normalize, pinned
from dsv4setup.vllm.venv import classify_pip_failure, create_venv, pip, python_version

InstallerName = Literal["uv", "pip"]
INSTALLER_CHOICES = ("auto", "uv", "pip")
FREEZE_FILE = "dsv4setup-freeze.txt"  # inside the venv: the resolved versions of its install
_CONFIG_LINE_RE = re.compile(r"^(?P<section>[^.]*)\.(?P<key>[A-Za-z0-9_-]+)=(?P<value>.*)$")
_SECTION_RANK = {"global": 0, "install": 1, ":env:": 2}  # pip: env beats [install] beats [global]
# pip option whose values are locations that may carry credentials -> (uv's variable, its separator)
_LOCATIONS: dict[str, tuple[str, str]] = {
    "index-url": ("UV_INDEX_URL", ""),  # one URL
    "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
    "find-links": ("UV_FIND_LINKS", ","),
}
# pip option -> (uv option or None, environment variable or None)
_CARRIED: dict[str, tuple[str | None, str | None]] = {
    "constraint": ("--constraint", None),
    "trusted-host": ("--allow-insecure-host", None),
    "no-binary": ("--no-binary", None),
    "only-binary": ("--only-binary", None),
    "cert": (None, "SSL_CERT_FILE"),
    "client-cert": (None, "SSL_CLIENT_CERT"),
    "default-timeout": (None, "UV_HTTP_TIMEOUT"),
    "timeout": (None, "UV_HTTP_TIMEOUT"),
}
_FLAGS = {"no-index": "--no-index", "pre": "--prerelease=allow", "no-cache-dir": "--no-cache"}
# settings of pip's own behaviour, meaningless for what gets installed (config-file: already read)
_NO_EFFECT = {"disable-pip-version-check", "no-input", "progress-bar", "quiet", "verbose", "no-color", "log",
              "no-warn-script-location", "root-user-action", "require-virtualenv", "retries", "config-file"}
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class PipConfig:
    """pip's settings as uv options: what was carried over, and what uv does not get."""

    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    carried: tuple[str, ...] = ()
    not_carried: tuple[str, ...] = ()
    compile_bytecode: bool = True  # pip's default; False: pip's `no-compile` is set


def pip_config_values(lines: Sequence[str]) -> dict[str, str]:
    """`pip config list` lines -> {option: value} with pip's precedence (env over [install] over [global])."""
    ranked: dict[str, tuple[int, str]] = {}
    for line in lines:
        m = _CONFIG_LINE_RE.match(line.strip())
        if not m or m.group("section") not in _SECTION_RANK:
            continue
        try:
            value = str(ast.literal_eval(m.group("value")))
        except (ValueError, SyntaxError):
            value = m.group("value").strip("'\"")
        rank = _SECTION_RANK[m.group("section")]
        if rank >= ranked.get(m.group("key"), (-1, ""))[0]:
            ranked[m.group("key")] = (rank, value)
    return {key: value for key, (_rank, value) in ranked.items()}


def translate_pip_config(values: Mapping[str, str]) -> PipConfig:
    """pip's settings -> uv options and environment; each setting is named as carried or not."""
    args: list[str] = []
    env: dict[str, str] = {}
    carried: list[str] = []
    not_carried: list[str] = []
    compile_bytecode = True
    for key, value in sorted(values.items()):
        _register_credentials(value)
        if key == "no-compile":
            compile_bytecode = value.strip().lower() not in _TRUE
            if not compile_bytecode:
                carried.append(f"{key} -> uv writes no bytecode at install")
        elif key in _LOCATIONS:
            uv_variable, joined, said = _location(key, value)
            if joined is None:
                not_carried.append(said)
            else:
                env[uv_variable] = joined
                carried.append(said)
        elif key in _CARRIED:
            option, variable = _CARRIED[key]
            if option is not None:
                for item in value.split():
                    args += [option, item]
                carried.append(f"{key}={value} -> {option}")
            else:
                env[str(variable)] = value
                carried.append(f"{key}={value} -> {variable}")
        elif key in _FLAGS:
            if value.strip().lower() in _TRUE:
                args.append(_FLAGS[key])
                carried.append(f"{key} -> {_FLAGS[key]}")
        elif key not in _NO_EFFECT:
            not_carried.append(f"{key}={value}")
    if "extra-index-url" in values:
        # pip takes the best version over all indexes; uv's default stops at the first index that has the name
        args += ["--index-strategy", "unsafe-best-match"]
        carried.append("several indexes -> --index-strategy unsafe-best-match (pip's behaviour)")
    return PipConfig(tuple(args), env, tuple(redact(c) for c in carried), tuple(redact(n) for n in not_carried),
                     compile_bytecode)


def _location(key: str, value: str) -> tuple[str, str | None, str]:
    """pip's index or find-links setting as (uv's variable, its value, what the report says); the value is
    None when uv's variable cannot hold it (a find-links item with a comma, UV_FIND_LINKS's separator)."""
    variable, separator = _LOCATIONS[key]
    items = value.split()
    unfit = any(separator in item for item in items) if separator else len(items) != 1
    if unfit:
        why = f"{separator!r} separates the locations" if separator else "it takes one location"
        return variable, None, f"{key}={value} (uv reads it from {variable}, where {why})"
    return variable, separator.join(items), f"{key}={value} -> {variable}"


def _register_credentials(value: str) -> None:
    """Index URLs may carry `user:token@`: the token becomes a secret, redacted from logs and outputs."""
    for item in value.split():
        parts = urlsplit(item)
        if parts.password:
            register_secret(parts.password)
        elif parts.username and "://" in item:
            register_secret(parts.username)  # a token given as the user name


def read_pip_config(python: Path) -> PipConfig:
    """This machine's pip settings (config files and PIP_* variables), translated for uv."""
    try:
        proc = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return PipConfig(not_carried=(f"pip's configuration (`{python} -m pip config list` did not run: {exc})",))
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return PipConfig(not_carried=(f"pip's configuration (`{python} -m pip config list` failed: {why})",))
    return translate_pip_config(pip_config_values(proc.stdout.splitlines()))


def find_uv() -> tuple[Path | None, str]:
    """The uv binary dsv4setup ships with and its version; (None, why) when it cannot run."""
    try:
        from uv import find_uv_bin

        binary = Path(find_uv_bin())
    except (ImportError, FileNotFoundError) as exc:
        return None, f"the uv package is not installed with dsv4setup ({exc})"
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{binary} does not run ({exc})"
    if proc.returncode != 0:
        return None, f"{binary} --version failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}"
    return binary, proc.stdout.strip()


def torch_backend(profile: Profile) -> str | None:
    """uv's --torch-backend for the profile: set explicitly, else cu<MAJOR><MINOR> of the profile's CUDA.

    None where the build is already decided: on CPU-only profiles, and when vllm.pip_constraints
    pins torch with a local label (`torch==2.13.0+cpu`). That torch comes from the machine's own
    indexes, which a backend would replace by the PyTorch index.
    """
    spec = profile.vllm
    if spec.torch_backend is not None:
        return spec.torch_backend
    if profile.match.cpu_only or "+" in pinned(spec.pip_constraints).get("torch", ""):
        return None
    if profile.toolkit.version is None:
        raise StepError(f"profile {profile.name} serves on GPUs but names no CUDA release for torch",
                        fix="set vllm.torch_backend (e.g. cu130) or toolkit.version (e.g. 13.0.2)")
    major, minor = parse_release(profile.toolkit.version)
    return f"cu{major}{minor}"


def uv_compiles_bytecode(config: PipConfig, environ: Mapping[str, str]) -> bool:
    """Whether uv writes the .pyc files at install: where Python will not write them at run time.

    pip always writes them at install (unless `no-compile`); uv only with --compile-bytecode, which
    costs about 50 s for the cpu-tiny venv. Where PYTHONDONTWRITEBYTECODE is set (many containers)
    Python never keeps bytecode, so without them every vLLM process (server, engine core, bench client)
    compiles vLLM's, torch's and transformers' sources again: measured, an import of vLLM's API server
    took 22 s instead of 11 s. Elsewhere the first start writes them, and the install stays fast.
    """
    return config.compile_bytecode and bool(environ.get("PYTHONDONTWRITEBYTECODE"))


def requested_installer(option: str | None, profile_value: str) -> str:
    """`--installer` (checked by the CLI) wins over the profile's vllm.installer (checked by its model)."""
    return option or profile_value


def parse_freeze(text: str) -> dict[str, str]:
    """`name==version` lines -> {normalised name: version}; editable and URL lines are left out."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith(("-", "#")):
            out[normalize(name)] = version.strip()
    return out


@dataclass(frozen=True)
class Installer:
    """uv or pip, with what the log and the step outputs say about the choice."""

    name: InstallerName
    why: str
    uv: Path | None = None
    config: PipConfig = field(default_factory=PipConfig)
    torch_backend: str | None = None
    compile_bytecode: bool = False

    @classmethod
    def choose(cls, requested: str, base_python: Path, backend: str | None = None) -> Installer:
        if requested == "pip":
            return cls("pip", "pip, as asked (--installer pip or vllm.installer: pip)", torch_backend=None)
        uv, version = find_uv()
        if uv is None:
            if requested == "uv":
                raise StepError(f"the installer uv is asked for but cannot run: {version}",
                                fix="reinstall dsv4setup (`pip install -e .` brings uv), or use `--installer pip`")
            return cls("pip", f"pip, because uv cannot run: {version}")
        config = read_pip_config(base_python)
        return cls("uv", f"{version} at {uv}", uv, config, backend, uv_compiles_bytecode(config, os.environ))

    def report(self, log: StepLog, progress: Callable[[str], None]) -> None:
        """The choice, and which of pip's settings uv does (not) see, in the log and on screen."""
        progress(f"installer: {self.why}")
        if self.name != "uv":
            if self.torch_backend is None:
                log.line("pip has no torch backend selection: torch comes from pip's own indexes")
            return
        if self.compile_bytecode:
            log.line("PYTHONDONTWRITEBYTECODE is set: Python will not keep bytecode when vLLM runs, so uv writes "
                     "it now (--compile-bytecode)")
        for item in self.config.carried:
            log.line(f"pip setting carried over to uv: {item}")
        if self.config.carried:
            progress(f"pip settings carried over to uv: {'; '.join(self.config.carried)}")
        if self.config.not_carried:
            progress(f"NOT carried over to uv (uv does not read pip's config): {'; '.join(self.config.not_carried)}"
                     f"; set the matching UV_* variable, or use `--installer pip`")
        progress(f"torch backend: {self.torch_backend or 'none (torch as pinned, from the indexes above)'}")

    def describe(self) -> dict[str, object]:
        """For the step outputs."""
        return {"name": self.name, "why": self.why, "torch_backend": self.torch_backend,
                "pip_config_carried": list(self.config.carried),
                "pip_config_not_carried": list(self.config.not_carried)}

    def clean_hint(self, package: str) -> str:
        """The command that drops `package` from this installer's cache."""
        return f"{self.uv} cache clean {package}" if self.name == "uv" else f"pip cache remove {package}"

    def create_venv(self, python: Path, dest: Path, log: StepLog) -> Path:
        """A fresh venv at `dest` on `python`: a step that runs again repairs by starting clean, and with
        uv's cache that costs seconds."""
        if self.name == "pip":
            return create_venv(python, dest, log)
        if python_version(python) is None:
            raise StepError(f"python interpreter {python} does not run",
                            fix="set vllm.python in the profile (or an override) to an existing python >= 3.11")
        run_logged([str(self.uv), "venv", "--clear", "--python", str(python), str(dest)], log,
                   what=f"creating venv {dest}", fix=f"check free space and permissions under {dest.parent}")
        return dest / "bin" / "python"

    def install(self, venv_python: Path, args: Sequence[str], constraints: Path | None, log: StepLog, *,
                env: Mapping[str, str] | None = None, cwd: Path | None = None,
                on_line: Callable[[str], None] | None = None, report: Callable[[str], None] | None = None) -> None:
        """Install `args` (requirements, `-e DIR`) under the constraints file, if any. `report` receives the
        installer's own progress as it streams (pip: package being fetched or built, bytes; uv: its lines)."""
        pins = ["-c", str(constraints)] if constraints is not None else []
        what = f"{self.name} install {' '.join(args)}"
        if self.name == "pip":
            pip(venv_python, ["install", *pins, *args], log, what=what, env=env, cwd=cwd, on_line=on_line,
                report=report)
            return
        backend = ["--torch-backend", self.torch_backend] if self.torch_backend else []
        compile_ = ["--compile-bytecode"] if self.compile_bytecode else []

        def seen(line: str) -> None:
            if on_line is not None:
                on_line(line)
            if report is not None and line.strip():
                report(f"uv: {line.strip()}")

        self._uv(["pip", "install", "--python", str(venv_python), *self.config.args, *compile_, *backend, *pins,
                  *args],
                 log, what=what, env=env, cwd=cwd, on_line=seen)

    def uninstall(self, venv_python: Path, names: Sequence[str], log: StepLog) -> None:
        if not names:
            return
        what = f"{self.name} uninstall {' '.join(names)}"
        if self.name == "pip":
            pip(venv_python, ["uninstall", "-y", *names], log, what=what)
        else:
            self._uv(["pip", "uninstall", "--python", str(venv_python), *names], log, what=what)

    def freeze(self, venv_python: Path, dest: Path, log: StepLog) -> dict[str, str]:
        """Write the resolved versions (`uv pip freeze` / `pip freeze --all`) to `dest`; returns them."""
        argv = [str(self.uv), "pip", "freeze", "--python", str(venv_python)] if self.name == "uv" else \
            [str(venv_python), "-m", "pip", "freeze", "--all"]
        log.line(f"$ {' '.join(argv)} > {dest}")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            log.write(proc.stderr)
            raise StepError(f"{self.name} freeze of {venv_python} failed (see {log.path})",
                            fix=f"recreate the venv: remove {venv_python.parents[1]} and run again")
        dest.write_text(proc.stdout, encoding="utf-8")
        return parse_freeze(proc.stdout)

    def _uv(self, args: Sequence[str], log: StepLog, *, what: str, env: Mapping[str, str] | None = None,
            cwd: Path | None = None, on_line: Callable[[str], None] | None = None) -> None:
        tail: list[str] = []

        def seen(line: str) -> None:
            tail.append(line)
            del tail[:-200]
            if on_line is not None:
                on_line(line)

        try:
            run_logged([str(self.uv), *args], log, env={**self.config.env, **(env or {})}, cwd=cwd, what=what,
                       on_line=seen, fix=f"see uv's output in {log.path}; `--installer pip` tries pip instead")
        except StepError:
            known = classify_pip_failure(tail)
            if known is None:
                raise
            raise StepError(f"{what}: {known[0]} (see {log.path})", fix=known[1]) from None


def base_python(configured: str | None) -> Path:
    """The interpreter venvs are built on: vllm.python, else the one running dsv4setup."""
    return Path(configured) if configured else Path(sys.executable)
