"""scripts/gpu-check here, on a machine without a GPU: it runs the GPU tests, which skip with
NVML's reason, and writes a report that says so; bad option mixes are refused clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.gpu.conftest import no_gpu_reason

SCRIPT = REPO_ROOT / "scripts" / "gpu-check"


def test_gpu_check_without_a_gpu_reports_every_gpu_test_skipped_with_the_nvml_reason(tmp_path: Path) -> None:
    reason = no_gpu_reason()
    assert reason is not None, "this test describes a machine without a GPU"
    report = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--report", str(report), "--no-fixture"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| test_live_")]
    assert len(rows) == 5 and all(f"| skipped | 0.0 | {reason.split(' (')[0]}" in row for row in rows), text


def test_gpu_check_refuses_fetching_and_using_wheels_at_once(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--wheels", str(tmp_path), "--from-wheels", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "exclude each other" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--from-wheels", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no missing.txt there; fetch with `--wheels DIR` first" in proc.stderr
