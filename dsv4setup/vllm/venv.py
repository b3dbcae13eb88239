"""Python venvs and pip, as the toolkit and vllm steps use them: create, install, explain failures."""

from __future__ import annotations

import re
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dsv4setup.core.errors import StepError
from dsv4setup.core.proc import StepLog, run_logged

_NO_DIST_RES = (re.compile(r"No matching distribution found for (\S+)"),  # pip
                re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
                # uv
                re.compile(r"Because (\S+?) was not found in the (?:package registry|provided package locations)"),
                re.compile(r"there is no version of (\S+?)(?: and|,|$)", re.MULTILINE))
_CONFLICT_MARKERS = ("ResolutionImpossible", "conflicting dependencies", "No solution found when resolving")
_PROBE_VERSION = "import sys; print('%d.%d' % sys.version_info[:2])"


def python_version(python: Path | str) -> str | None:
    """'3.11' for a working interpreter, None when it does not start."""
    try:
        proc = subprocess.run([str(python), "-c", _PROBE_VERSION], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def check_venv_support(python: Path | str) -> str:
    """Fail early, with the fix, when `python` is missing or lacks venv/ensurepip (Debian's python3-venv)."""
    version = python_version(python)
    if version is None:
        raise StepError(f"python interpreter {python} does not run",
                        fix="set vllm.python in the profile (or an override) to an existing python >= 3.11")
    try:
        proc = subprocess.run([str(python), "-c", "import venv, ensurepip"], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepError(f"python interpreter {python} does not run: {exc}") from None
    if proc.returncode != 0:
        raise StepError(
            f"python {version} at {python} has no working venv module (ensurepip missing): "
            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'import failed'}",
            fix=f"install it without touching the system python's packages: `sudo apt install python{version}-venv` "
                 f"(Debian/Ubuntu), or point vllm.python at another interpreter (e.g. one from uv or pyenv)")
    return version


def create_venv(python: Path | str, dest: Path, log: StepLog) -> Path:
    """A fresh venv at `dest` built on `python` (`--clear`: nothing of an earlier install stays)."""
    version = check_venv_support(python)
    venv_python = dest / "bin" / "python"
    run_logged([str(python), "-m", "venv", "--clear", str(dest)], log, what=f"creating venv {dest}",
               fix=f"check free space and permissions under {dest.parent}")
    if not venv_python.exists():
        raise StepError(f"`{python} -m venv {dest}` left no {venv_python}",
                        fix=f"install python{version}-venv or set vllm.python to another interpreter")
    return venv_python


def classify_pip_failure(lines: Sequence[str]) -> tuple[str, str] | None:
    """(message, fix) for pip or uv failures whose cause is recognisable in the output, else None."""
    text = "\n".join(lines)
    for regex in _NO_DIST_RES:
        if m := regex.search(text):
            req = m.group(1)
            return (f"no distribution found for {req}",
                    f"check that {req} exists for this platform and Python on your index "
                    f"(`pip config list`, PIP_INDEX_URL/PIP_FIND_LINKS, which dsv4setup passes on to uv; e.g. a "
                    f"+cpu torch needs the PyTorch CPU index or a local wheel directory), or change the pin "
                    f"in the profile")
    if any(marker in text for marker in _CONFLICT_MARKERS):
        return ("no consistent set of versions could be resolved",
                "the pins in the profile (vllm.version, vllm.pip_constraints) contradict each other or "
                "the package's own requirements; the conflicting requirements are listed in the log")
    return None


_PIP_LINE_RES = (
    (re.compile(r"^Collecting (\S+)"), "collecting {0}"),
    (re.compile(r"^\s*Downloading (\S+) \(([\d.]+ [kMG]?B)\)"), "downloading {0} ({1})"),
    (re.compile(r"^\s*Using cached (\S+)"), "using cached {0}"),
    (re.compile(r"^\s*Building wheel for (\S+)"), "building a wheel for {0}"),
    (re.compile(r"^Installing collected packages: (.*)"), "installing {n} packages"),
)
_SIZE_RE = re.compile(r"([\d.]+) ([kMG]?)B")
_UNIT = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}


class PipProgress:
    """pip's own progress, parsed from its output as it streams: the package fetched or built, bytes so far."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report
        self.downloaded = 0.0
        self.packages = 0

    def __call__(self, line: str) -> None:
        for regex, template in _PIP_LINE_RES:
            if (m := regex.match(line)) is None:
                continue
            if template.startswith("collecting"):
                self.packages += 1
            if template.startswith("downloading") and (size := _SIZE_RE.fullmatch(m.group(2))):
                self.downloaded += float(size.group(1)) * _UNIT[size.group(2)]
            text = template.format(*m.groups(), n=len(m.group(1).split(",")))
            self.report(f"pip: {text} [{self.packages} packages, {self.downloaded / 1e6:.0f} MB downloaded]")
            return


def pip(python: Path, args: Sequence[str], log: StepLog, *, what: str, env: Mapping[str, str] | None = None,
        cwd: Path | None = None, on_line: Callable[[str], None] | None = None,
        report: Callable[[str], None] | None = None) -> None:
    """`python -m pip ARGS` into the step log; a failure names its cause when pip's output shows it.

    `report` receives pip's progress (package being fetched or built, bytes so far) as it streams.
    """
    tail: deque[str] = deque(maxlen=200)
    progress = PipProgress(report) if report is not None else None

    def seen(line: str) -> None:
        tail.append(line)
        if on_line is not None:
            on_line(line)
        if progress is not None:
            progress(line)

    try:
        run_logged([str(python), "-m", "pip", *args], log, env=env, cwd=cwd, what=what, on_line=seen,
                   fix=f"see the pip output in {log.path}")
    except StepError:
        known = classify_pip_failure(list(tail))
        if known is None:
            raise
        raise StepError(f"{what}: {known[0]} (see {log.path})", fix=known[1]) from None
