"""Probing an nvcc: its release, its real install directory, and whether it compiles for an arch.

The compile probe needs no GPU: `nvcc -arch=sm_120a -c k.cu` proves the toolkit supports the
target, anywhere. On a machine with a GPU of that arch, the run probe goes further: it builds a
small program (kernel + host code, cudart linked statically), runs it on the GPU and checks the
values the kernel wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv4setup.core.fsutil import atomic_write_text, stat_key
from dsv4setup.download.verify import sha256_file
from dsv4setup.hardware.arch import Release

PROBE_KERNEL = "__global__ void dsv4setup_probe(float *x) { x[threadIdx.x] *= 2.0f; }\n"
RUN_PROBE_OK = "dsv4setup-probe-ok"
RUN_PROBE_PROGRAM = r"""#include <cstdio>
__global__ void dsv4setup_probe(int *x) { x[threadIdx.x] = 2 * threadIdx.x + 1; }
int main() {
  const int n = 64;
  int host[n] = {0};
  int *dev = nullptr;
  cudaError_t err = cudaMalloc(&dev, sizeof(host));
  if (err == cudaSuccess) { dsv4setup_probe<<<1, n>>>(dev); err = cudaGetLastError(); }
  if (err == cudaSuccess) err = cudaMemcpy(host, dev, sizeof(host), cudaMemcpyDeviceToHost);
  if (err != cudaSuccess) { printf("CUDA error: %s\n", cudaGetErrorString(err)); return 2; }
  for (int i = 0; i < n; ++i)
    if (host[i] != 2 * i + 1) { printf("wrong result at %d: %d\n", i, host[i]); return 3; }
  printf("RUN_PROBE_OK %d values\n", n);
  return 0;
}
""".replace("RUN_PROBE_OK", RUN_PROBE_OK)
PROBE_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120
_RELEASE_RE = re.compile(r"release (\d+)\.(\d+)")
_HERE_RE = re.compile(r"^#\$ _HERE_=(.+)$", re.MULTILINE)


def parse_nvcc_release(text: str) -> Release | None:
    """`nvcc --version` output -> (major, minor), e.g. 'release 13.0, V13.0.88' -> (13, 0)."""
    m = _RELEASE_RE.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def nvcc_release(nvcc: Path) -> Release | None:
    """The release an nvcc reports; None when it does not run."""
    try:
        proc = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, errors="replace",
                              timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvcc_release(proc.stdout) if proc.returncode == 0 else None


@dataclass(frozen=True)
class CompileResult:
    ok: bool
    output: str
    cuda_home: Path | None  # the toolkit root nvcc reports (`_HERE_/..`), wrappers resolved


def _run(argv: list[str], cwd: str, timeout: int) -> subprocess.CompletedProcess[str] | str:
    """The finished process, or why it could not run."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", cwd=cwd, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except OSError as exc:
        return f"cannot run {argv[0]}: {exc.strerror}"
    except subprocess.TimeoutExpired:
        return f"{argv[0]} did not finish within {timeout} s"


def compile_probe(nvcc: Path, arch: str, *, run: bool = False) -> CompileResult:
    """Compile a tiny kernel for exactly `arch` in a temporary directory (`-v` reveals nvcc's home).

    run=True (a GPU of `arch` is present): build a program instead, run it and check its result.
    """
    with tempfile.TemporaryDirectory(prefix="dsv4setup-nvcc-") as tmp:
        src, out = Path(tmp) / "k.cu", Path(tmp) / ("k" if run else "k.o")
        src.write_text(RUN_PROBE_PROGRAM if run else PROBE_KERNEL, encoding="utf-8")
        # a program links cudart: NVIDIA's pip wheels keep it in lib/, where their nvcc.profile (lib64) does not look
        link = ["-L", str(nvcc.resolve().parents[1] / "lib")] if run else ["-c"]
        argv = [str(nvcc), f"-arch={arch}", *link, str(src), "-o", str(out), "-v"]
        proc = _run(argv, tmp, PROBE_TIMEOUT_S)
        if isinstance(proc, str):
            return CompileResult(False, proc, None)
        output = proc.stdout + proc.stderr
        here = _HERE_RE.search(output)
        home = Path(here.group(1).strip()).resolve().parent if here else None
        if proc.returncode != 0 or not out.is_file() or not run:
            return CompileResult(proc.returncode == 0 and out.is_file(), output, home)
        ran = _run([str(out)], tmp, RUN_TIMEOUT_S)
        if isinstance(ran, str):
            return CompileResult(False, f"{output}\nthe probe program: {ran}", home)
        ok = ran.returncode == 0 and RUN_PROBE_OK in ran.stdout
        return CompileResult(ok, f"{output}\nthe probe program (exit {ran.returncode}): {ran.stdout}{ran.stderr}",
                             home)


def _sha256_by_stat(binary: Path, known: dict[str, Any]) -> tuple[str, bool]:
    """(sha256 of the file, whether it was hashed now): hashed again only when its stat moved since
    the proof's `hashed` entry (a write or a replacement moves ctime); OSError when unreadable."""
    key, hashed = stat_key(binary), known.setdefault("hashed", {})
    entry = hashed.get(str(binary))
    if key is not None and isinstance(entry, list) and len(entry) == 2 and entry[0] == key:
        return str(entry[1]), False
    digest = sha256_file(binary)
    hashed[str(binary)] = [key, digest]
    return digest, True


def proven_compile(nvcc: Path, arch: str, proofs: Path) -> CompileResult:
    """compile_probe, done once per nvcc binary and arch: the proof is keyed on the sha256 of the
    nvcc file and the arch, so a changed or replaced nvcc is compiled with again."""
    try:
        known = json.loads(proofs.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    try:
        digest, rehashed = _sha256_by_stat(nvcc.resolve(), known)
    except OSError as exc:
        return CompileResult(False, f"cannot read {nvcc}: {exc.strerror}", None)
    key, changed = f"{digest}:{arch}", rehashed
    if isinstance(known.get(key), dict) and known[key].get("nvcc") == str(nvcc):
        home = known[key].get("cuda_home")
        result = CompileResult(True, f"compiled for {arch} before (proof {proofs.name}, same nvcc sha256)",
                               Path(home) if home else None)
    else:
        result = compile_probe(nvcc, arch)
        if result.ok:
            known[key] = {"nvcc": str(nvcc), "arch": arch, "cuda_home": str(result.cuda_home or "") or None}
            changed = True
    if changed:
        proofs.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(proofs, json.dumps(known, indent=1))
    return result


def error_lines(output: str, limit: int = 5) -> str:
    """The compiler's own messages without the `-v` command echo."""
    lines = [ln for ln in output.splitlines() if ln.strip() and not ln.startswith("#$")]
    return "\n".join(lines[-limit:])


@dataclass(frozen=True)
class HostTools:
    """Where to look for tools already on this machine (conda, an existing nvcc).

    `path` is the PATH to search (None: the process PATH); `nvcc_dirs` are extra bin
    directories checked after it. Tests point both at directories they control, so no test
    depends on whether the machine happens to have /usr/local/cuda.
    """

    path: str | None = None
    nvcc_dirs: Sequence[Path] = field(default_factory=tuple)

    @classmethod
    def from_environ(cls) -> HostTools:
        dirs = [Path(os.environ[v]) / "bin" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
        dirs.append(Path("/usr/local/cuda/bin"))
        return cls(None, tuple(dirs))

    def which(self, name: str) -> Path | None:
        found = shutil.which(name, path=self.path if self.path is not None else os.environ.get("PATH", ""))
        return Path(found) if found else None

    def nvcc_candidates(self) -> list[Path]:
        """Every distinct nvcc this machine offers, PATH first."""
        seen: list[Path] = []
        found = self.which("nvcc")
        for cand in ([found] if found else []) + [d / "nvcc" for d in self.nvcc_dirs]:
            if cand.is_file() and os.access(cand, os.X_OK) and cand.resolve() not in [s.resolve() for s in seen]:
                seen.append(cand)
        return seen
