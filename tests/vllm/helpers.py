"""Test material for the vllm step: tiny real wheels, a tiny git repo, a recording fake pip.

- Tiny wheels stand in for vLLM where a real pip install is wanted in seconds: pip, the venv,
  constraints and uninstall are all real (PIP_NO_INDEX + PIP_FIND_LINKS keep it offline).
- The git and source routes build vLLM (a precompiled-wheel build, a CUDA build): neither can
  run on CI, so their pip call goes to a recording fake `pip` module put first on PYTHONPATH.
  It records argv, the build variables and the constraints, prints ninja-style progress,
  and performs an editable install the way pip does (a .pth file plus dist-info), so the
  step's real postcondition can check it. git itself is real, on a local repository.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

BUILD_VARS = ("VLLM_USE_PRECOMPILED", "VLLM_PRECOMPILED_WHEEL_LOCATION", "CUDA_HOME", "CUDACXX",
              "TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "NVCC_THREADS", "VLLM_TARGET_DEVICE", "PATH")


def build_wheel(dest: Path, name: str, version: str, *, files: dict[str, str] | None = None,
                requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel with `files` (archive path -> text) and Requires-Dist lines."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                    *(f"Requires-Dist: {r}\n" for r in requires)])
    wheel_meta = "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries = {**(files or {}), f"{dist}.dist-info/METADATA": meta, f"{dist}.dist-info/WHEEL": wheel_meta}
    record = []
    for path, text in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in entries.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def tiny_index(dest: Path) -> Path:
    """tinyvllm 0.1.0 (a `vllm` package, needs tinyvision>=1.0) and tinyvision 0.5, 1.0, 2.0."""
    build_wheel(dest, "tinyvllm", "0.1.0", files={"vllm/__init__.py": "__version__ = '0.1.0'\n"},
                requires=("tinyvision>=1.0",))
    for version in ("0.5", "1.0", "2.0"):
        build_wheel(dest, "tinyvision", version, files={"tinyvision/__init__.py": ""})
    return dest


_FAKE_PIP = '''"""Recording fake pip (tests/vllm/helpers.py)."""
import json, os, pathlib, sys, sysconfig
args = sys.argv[1:]
entry = {"argv": args, "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in BUILD_VARS}}
if "-c" in args:
    entry["constraints"] = pathlib.Path(args[args.index("-c") + 1]).read_text()
with open(os.environ["FAKE_PIP_RECORD"], "a") as fh:
    fh.write(json.dumps(entry) + "\\n")
site = pathlib.Path(sysconfig.get_paths()["purelib"])
if args[0] == "install" and "-e" in args:
    src = pathlib.Path(args[args.index("-e") + 1])
    for i in range(1, 5):
        print(f"[{i}/4] Building CUDA object csrc/k{i}.cu.o", flush=True)
    name, version = (src / "NAME").read_text().strip(), (src / "VERSION").read_text().strip()
    (site / f"__editable__.{name}.pth").write_text(str(src) + "\\n")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n")
    (info / "RECORD").write_text(f"{info.name}/METADATA,,\\n")
elif args[0] == "uninstall":
    pass  # nothing of the removed packages was installed by this fake
elif args[0] == "freeze":
    for info in sorted(site.glob("*.dist-info")):
        print(info.name.removesuffix(".dist-info").replace("-", "==", 1))
else:
    sys.exit(f"fake pip: unexpected {args}")
'''


def write_fake_pip(dest: Path) -> Path:
    """A directory to put first on PYTHONPATH: `python -m pip` then runs the recording fake."""
    pkg = dest / "pip"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(f"BUILD_VARS = {BUILD_VARS!r}\n" + _FAKE_PIP)
    return dest


def pip_calls(record: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
                               "HOME": str(repo), "PATH": "/usr/bin:/bin:/usr/local/bin"})
    return proc.stdout.strip()


def tiny_vllm_repo(dest: Path) -> dict[str, str]:
    """A git repo shaped like a vLLM checkout: tag v0.1.0, then a commit that builds 0.2.0.

    Returns the commits: {"v0.1.0": sha, "next": sha}.
    """
    dest.mkdir(parents=True)
    git(dest, "init", "-q", "-b", "main")
    (dest / "vllm").mkdir()
    (dest / "vllm" / "__init__.py").write_text("")
    (dest / "NAME").write_text("tinyvllm\n")
    (dest / "VERSION").write_text("0.1.0\n")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "0.1.0")
    git(dest, "tag", "-a", "v0.1.0", "-m", "release 0.1.0")
    first = git(dest, "rev-parse", "HEAD")
    (dest / "VERSION").write_text("0.2.0\n")
    git(dest, "commit", "-q", "-am", "0.2.0")
    return {"v0.1.0": first, "next": git(dest, "rev-parse", "HEAD")}
