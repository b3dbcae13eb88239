"""The smoke test: a deterministic chat completion with the official openai client, and MTP proof.

"It started" is not "MTP works". MTP can be silently inactive (stripped head: no spec-decode
counters), or active but never accepted (head not loaded: drafts, 0 accepted, no error). The
proof is vLLM's own counters, read from /metrics before and after a short generation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dsv4setup.core.finding import Finding, failed, passed
from dsv4setup.serve.metrics import SpecDecodeCounters, fetch_metrics, parse_spec_decode, spec_decode_delta

SMOKE_SCHEMA = "dsv4setup.smoke/3"

FIXES = {
    "models": "the server does not list the model: check serve.served_model_name and `dsv4setup logs serve`",
    "completion": "the chat completion failed: see the error above and `dsv4setup logs serve -n 60`",
    "answer": "the answer (content and reasoning) lacks the expected text: check the chat template and the "
              "reasoning parser, or set smoke.expect (`--set smoke.expect=TEXT`) to what this model answers",
    "spec-decode-active": "speculative decoding is not active: check that the serve command carries "
                          "--speculative-config (`dsv4setup plan`) and that the checkpoint has its MTP tensors "
                          "(`dsv4setup checkpoint lint CHECKPOINT_DIR`); a stripped MTP head makes `mtp` a silent "
                          "no-op",
    "drafts-made": "no drafts were made during the generation: the MTP drafter is configured but not running; "
                   "look for 'Loading drafter model' in `dsv4setup logs serve`",
    "acceptance": "drafts were rejected: 0 % acceptance with no error means the MTP head or its embedding was "
                  "not loaded (count the mtp.* keys: `dsv4setup checkpoint lint CHECKPOINT_DIR`), or the draft's "
                  "context is "
                  "shorter than the target's (hf_config_path and --hf-overrides do not reach the draft)",
    "metrics": "the server's /metrics does not answer: is the server up (`dsv4setup serve --json`)?",
    "lossless": "greedy output with MTP differs from the k=0 reference on more prompts than the profile's "
                "bench.lossless_tolerance allows: `lossless.differing` names each prompt, where its text parts and "
                "an excerpt of both; a bench of this k against k=0 (`dsv4setup bench --k 0,K --dataset DATASET`) "
                "measures it again",
}


@dataclass(frozen=True)
class SmokeRequest:
    base_url: str  # http://host:port (no /v1)
    api_key: str
    model: str | None  # served model name; None: the first one listed
    prompt: str
    expect: str | None
    max_tokens: int
    num_speculative_tokens: int
    min_acceptance: float
    timeout_s: float = 300.0
    metrics_settle_s: float = 5.0  # counters reach /metrics just after the response


@dataclass
class SmokeReport:
    request: SmokeRequest
    checks: list[Finding] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    model: str | None = None
    content: str | None = None
    reasoning: str | None = None
    completion_tokens: int | None = None
    elapsed_s: float | None = None
    mtp: dict[str, Any] = field(default_factory=dict)
    lossless: dict[str, Any] | None = None  # smoke --lossless: the comparison with the k=0 reference

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(passed(f"smoke.{name}", detail) if ok else failed(f"smoke.{name}", detail, FIXES[name]))
        return ok

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def first_failure(self) -> Finding | None:
        return next((c for c in self.checks if not c.ok), None)

    def to_doc(self) -> dict[str, Any]:
        req = self.request
        tps = (round(self.completion_tokens / self.elapsed_s, 2)
               if self.completion_tokens and self.elapsed_s else None)
        return {"schema": SMOKE_SCHEMA, "ok": self.ok, "base_url": req.base_url, "models": self.models,
                "model": self.model, "prompt": req.prompt, "expect": req.expect, "content": self.content,
                "reasoning": self.reasoning, "completion_tokens": self.completion_tokens,
                "elapsed_s": self.elapsed_s, "tokens_per_s": tps, "mtp": self.mtp, "lossless": self.lossless,
                "checks": [c.to_dict() for c in self.checks]}


def _counters(req: SmokeRequest) -> SpecDecodeCounters | None:
    return parse_spec_decode(fetch_metrics(req.base_url, req.api_key))


def _settled_counters(req: SmokeRequest, before: SpecDecodeCounters) -> SpecDecodeCounters | None:
    """The counters after the generation, once they moved (or after metrics_settle_s)."""
    deadline = time.monotonic() + req.metrics_settle_s
    while True:
        after = _counters(req)
        if after is None or after.drafts > before.drafts or time.monotonic() >= deadline:
            return after
        time.sleep(0.25)


def _generate(client: Any, report: SmokeReport) -> bool:
    import openai

    req = report.request
    started = time.monotonic()
    try:
        response = client.chat.completions.create(
            model=report.model, messages=[{"role": "user", "content": req.prompt}], temperature=0,
            max_tokens=req.max_tokens, seed=0)
    except openai.OpenAIError as exc:
        return report.check("completion", False, f"chat completion failed: {type(exc).__name__}: {exc}")
    report.elapsed_s = round(time.monotonic() - started, 3)
    message = response.choices[0].message
    report.content = message.content or ""
    report.reasoning = getattr(message, "reasoning", None) or getattr(message, "reasoning_content", None)
    report.completion_tokens = response.usage.completion_tokens if response.usage else None
    return report.check("completion", bool(report.completion_tokens),
                        f"{report.completion_tokens} tokens in {report.elapsed_s}s")


def _check_answer(report: SmokeReport) -> None:
    expect = report.request.expect
    if expect is None:
        return
    found_in = [name for name, text in (("content", report.content), ("reasoning", report.reasoning))
                if text and expect in text]
    shown = (report.content or "")[:120]
    report.check("answer", bool(found_in), f"{expect!r} found in {' and '.join(found_in)}" if found_in
                 else f"{expect!r} not in the answer: content={shown!r}, reasoning={(report.reasoning or '')[:120]!r}")


def _check_mtp(report: SmokeReport, before: SpecDecodeCounters | None, after: SpecDecodeCounters | None) -> None:
    req = report.request
    report.mtp = {"checked": True, "skipped_reason": None, "num_speculative_tokens": req.num_speculative_tokens,
                  "min_acceptance": req.min_acceptance}
    if before is None or after is None:
        report.check("spec-decode-active", False, "no vllm:spec_decode_* counters on /metrics")
        return
    report.check("spec-decode-active", True, "vllm:spec_decode_* counters present on /metrics")
    delta = spec_decode_delta(before, after)
    report.mtp.update(delta.to_dict(), drafts_total=after.drafts)
    if not report.check("drafts-made", delta.drafts > 0, f"{delta.drafts:.0f} drafts, "
                        f"{delta.draft_tokens:.0f} draft tokens during the generation"):
        return
    rate = delta.acceptance_rate or 0.0
    report.check("acceptance", rate >= req.min_acceptance,
                 f"acceptance {rate:.1%} ({delta.accepted:.0f}/{delta.draft_tokens:.0f}), "
                 f"minimum {req.min_acceptance:.0%}; mean acceptance length {delta.mean_acceptance_length}")


Compare = Callable[[Any, str | None], dict[str, Any]]  # (openai client, model) -> smoke/lossless.py's result


def run_smoke(req: SmokeRequest, lossless: Compare | None = None) -> SmokeReport:
    """List models, generate deterministically, check the answer and (k > 0) the MTP counters; with `lossless`,
    then compare greedy texts with the k=0 reference (only when everything before passed)."""
    import openai

    report = SmokeReport(req)
    # trust_env=False: no proxy from the environment ever sees the request (and the key in it)
    client = openai.OpenAI(base_url=f"{req.base_url}/v1", api_key=req.api_key, timeout=req.timeout_s, max_retries=0,
                           http_client=openai.DefaultHttpxClient(trust_env=False, timeout=req.timeout_s))
    try:
        report.models = [m.id for m in client.models.list().data]
    except openai.OpenAIError as exc:
        report.check("models", False, f"listing models failed: {type(exc).__name__}: {exc}")
        return report
    report.model = req.model if req.model in report.models else (report.models[0] if report.models else None)
    if not report.check("models", report.model is not None and (req.model is None or req.model in report.models),
                        f"served: {', '.join(report.models) or 'none'}"):
        return report
    spec = req.num_speculative_tokens > 0
    try:
        before = _counters(req) if spec else None
        if not _generate(client, report):
            return report
        _check_answer(report)
        if spec:
            after = _settled_counters(req, before) if before is not None else None
            _check_mtp(report, before, after)
        else:
            report.mtp = {"checked": False, "num_speculative_tokens": 0,
                          "skipped_reason": "speculative decoding is off (spec.num_speculative_tokens = 0)"}
    except OSError as exc:
        report.check("metrics", False, f"cannot read {req.base_url}/metrics: {exc}")
    if lossless is not None and report.ok:
        from dsv4setup.smoke.lossless import lossless_summary

        report.lossless = lossless(client, report.model)
        report.check("lossless", report.lossless["ok"], lossless_summary(report.lossless))
    return report
