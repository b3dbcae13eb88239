"""vLLM's output reaches serve.log through the redacting filter: a real server process (a script that
prints the API key it was given, a progress bar rewritten with \\r, a key split across two writes)
started by start_server; the log keeps the order, shows no key, and the filter ends with the server."""

from __future__ import annotations

import sys
import time

import psutil

from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.process import ServerRecord, start_server, stop_server

KEY = "sk-serve-log-key-0123456789"
TALKER = """
import os, sys, time
key = os.environ["VLLM_API_KEY"]
print("line 1: starting", flush=True)
print(f"line 2: api key {key} (vLLM echoes its args)", flush=True)
for i in range(3):
    sys.stdout.write(f"\\rLoading {i}/3"); sys.stdout.flush(); time.sleep(0.2)
sys.stdout.write(f"\\nline 3: half {key[:9]}"); sys.stdout.flush(); time.sleep(1.2)
sys.stdout.write(f"{key[9:]} joined\\n"); sys.stdout.flush()
print(f"line 4: Bearer {key}", file=sys.stderr, flush=True)
time.sleep(600)
"""


def test_serve_log_gets_the_servers_output_in_order_without_the_key(workdir: Workdir, reaper: list[ServerRecord],
                                                                     port: int) -> None:
    log = workdir.log_file("serve")
    log.write_text("===== header written by the step\n")
    record, proc = start_server([sys.executable, "-c", TALKER], {"VLLM_API_KEY": KEY}, host="127.0.0.1", port=port,
                                log_path=log, cwd=workdir.root)
    reaper.append(record)
    deadline = time.monotonic() + 60
    while "line 4" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert KEY not in text and KEY[:9] not in text.replace("***", "")
    assert text.index("header") < text.index("line 1") < text.index("line 2: api key ***") \
        < text.index("Loading 2/3") < text.index("line 3: half *** joined") < text.index("line 4: Bearer ***")
    filters = [p for p in psutil.process_iter(["cmdline"]) if str(log) in (p.info["cmdline"] or [])]
    assert len(filters) == 1
    stop_server(workdir, record, grace_s=5)
    psutil.wait_procs(filters, timeout=10)
    assert not filters[0].is_running() or filters[0].status() == psutil.STATUS_ZOMBIE  # it ends with the server
