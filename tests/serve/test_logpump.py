"""The serve log pump as a real process on a real pipe: order, rotation by size, the filter hook, `logs serve`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

from dsv4setup.serve.logpump import RotatingLog, pump, pump_argv, rotated_files, tail_across

REPO = Path(__file__).resolve().parents[2]
WRITER = ("import sys\nfor i in range(2000):\n"
          "    (sys.stdout if i % 2 else sys.stderr).write(f'line {i:05d} ' + 'x' * 40 + '\\n')\n")


def test_a_server_writing_stdout_and_stderr_is_logged_in_order_and_rotated_by_size(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "serve.log"
    read_end, write_end = os.pipe()
    pumper = subprocess.Popen([*pump_argv(log), "--max-bytes", "20000", "--keep", "3"], stdin=read_end, cwd=REPO)
    writer = subprocess.Popen([sys.executable, "-u", "-c", WRITER], stdout=write_end, stderr=subprocess.STDOUT)
    os.close(read_end)
    os.close(write_end)
    assert writer.wait(timeout=60) == 0 and pumper.wait(timeout=60) == 0  # the pump ends at the writer's EOF
    files = rotated_files(log)
    assert [f.name for f in files] == ["serve.log.3", "serve.log.2", "serve.log.1", "serve.log"]
    assert all(f.stat().st_size <= 20000 for f in files)
    kept = "".join(f.read_text() for f in files).splitlines()
    numbers = [int(line.split()[1]) for line in kept]
    assert numbers == list(range(numbers[0], 2000))  # the newest lines, none lost or reordered inside the kept ones
    assert len(kept) > 1000 and not log.with_name("serve.log.4").exists()


def test_the_pump_ignores_sigterm_and_writes_what_the_server_said_last(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    pumper = subprocess.Popen(pump_argv(log), stdin=subprocess.PIPE, cwd=REPO)
    pumper.stdin.write(b"first\n")
    pumper.stdin.flush()
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the pump is up (its signal handling is set before it reads)
    pumper.terminate()
    pumper.stdin.write(b"last words\n")
    pumper.stdin.close()
    assert pumper.wait(timeout=30) == 0
    assert log.read_text() == "first\nlast words\n"


def test_the_line_filter_hook_sees_every_line_and_tee_gets_the_same(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "serve.log", max_bytes=1000, keep=2)
    tee = io.BytesIO()
    pump(io.BytesIO(b"key=abc123\nplain\n"), log, tee, line_filter=lambda line: line.replace("abc123", "***"))
    log.close()
    assert (tmp_path / "serve.log").read_text() == "key=***\nplain\n" == tee.getvalue().decode()


def test_tail_and_logs_serve_read_across_the_rotation(tmp_path: Path) -> None:
    logs = tmp_path / "wd" / "logs"
    logs.mkdir(parents=True)
    (logs / "serve.log.2").write_text("a1\na2\n")
    (logs / "serve.log.1").write_text("b1\nb2\n")
    (logs / "serve.log").write_text("c1\n")
    assert tail_across(logs / "serve.log", 4) == ["a2", "b1", "b2", "c1"]
    assert tail_across(logs / "serve.log", 1) == ["c1"]
    run = [sys.executable, "-m", "dsv4setup", "logs", "serve", "--workdir", str(tmp_path / "wd")]
    everything = subprocess.run(run, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert everything.returncode == 0 and everything.stdout == "a1\na2\nb1\nb2\nc1\n"
    last3 = subprocess.run([*run, "-n", "3"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert last3.stdout == "b1\nb2\nc1\n"
