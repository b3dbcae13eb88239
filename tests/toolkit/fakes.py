"""Recording fakes for what cannot exist on a CI machine: a conda channel and the nvcc it installs.

Each fake is a small Python script (shebang: the interpreter running the tests). Fakes append
one JSON line per call (argv) to a record file and create the files the real tool would.
The real pip route and a real nvcc are exercised by the slow tests in test_toolkit_pip_real.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dsv4setup.toolkit.nvcc import RUN_PROBE_OK

_FAKE_NVCC = '''#!{python}
import json, pathlib, sys
RELEASE, ARCHES, RECORD = {release!r}, {arches!r}, {record!r}
args = sys.argv[1:]
if RECORD:
    with open(RECORD, "a") as fh:
        fh.write(json.dumps(["nvcc", *args]) + "\\n")
if "--version" in args:
    print("nvcc: NVIDIA (R) Cuda compiler driver")
    print(f"Cuda compilation tools, release {{RELEASE}}, V{{RELEASE}}.88")
    sys.exit(0)
arch = next((a.split("=", 1)[1] for a in args if a.startswith("-arch=")), None)
print(f"#$ _HERE_={{pathlib.Path(__file__).parent}}")
if arch not in ARCHES:
    print(f"nvcc fatal   : Unsupported gpu architecture '{{arch}}'", file=sys.stderr)
    sys.exit(1)
out = pathlib.Path(args[args.index("-o") + 1])
if "-c" in args:
    out.write_bytes(b"fake object")
else:  # a program: the GPU probe of a machine whose preflight saw a GPU; it "runs" fine
    out.write_text("#!/bin/sh\\necho {ok} 64 values\\n")
    out.chmod(0o755)
'''

_FAKE_CONDA = '''#!{python}
import json, pathlib, sys
RECORD, NVCC = {record!r}, {nvcc!r}
args = sys.argv[1:]
with open(RECORD, "a") as fh:
    fh.write(json.dumps([pathlib.Path(sys.argv[0]).name, *args]) + "\\n")
prefix = pathlib.Path(args[args.index("-p") + 1])
(prefix / "conda-meta").mkdir(parents=True)
for spec in args:
    for pkg in ("cuda-toolkit", "cuda-version"):
        if spec.startswith(pkg + "="):
            (prefix / "conda-meta" / f"{{pkg}}-{{spec.split('=', 1)[1]}}-0.json").write_text("{{}}")
if NVCC:
    (prefix / "bin").mkdir()
    nvcc = prefix / "bin" / "nvcc"
    nvcc.write_text(NVCC)
    nvcc.chmod(0o755)
'''


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


def fake_nvcc_text(release: str = "13.0", arches: tuple[str, ...] = ("sm_120a", "sm_121a", "sm_90a", "sm_100a"),
                   record: Path | None = None) -> str:
    return _FAKE_NVCC.format(python=sys.executable, release=release, arches=list(arches),
                             record=str(record) if record else "", ok=RUN_PROBE_OK)


def write_fake_nvcc(path: Path, **kwargs: object) -> Path:
    """A fake nvcc: reports `release`, 'compiles' (writes -o) only for `arches`, prints its _HERE_;
    a program it 'builds' (no -c: the GPU probe) prints the probe's success line."""
    return _write(path, fake_nvcc_text(**kwargs))  # type: ignore[arg-type]


def write_recording_fake_conda(bin_dir: Path, record: Path, *, name: str = "conda", nvcc: str | None = None) -> Path:
    """A fake conda: records argv, creates PREFIX/conda-meta records and (unless nvcc is '') PREFIX/bin/nvcc."""
    return _write(bin_dir / name, _FAKE_CONDA.format(python=sys.executable, record=str(record),
                                                     nvcc=fake_nvcc_text() if nvcc is None else nvcc))


def calls(record: Path) -> list[list[str]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]
