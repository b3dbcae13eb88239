"""`smoke --lossless`: the running server's greedy texts against the k=0 reference the last bench stored.

The server is not restarted: each reference prompt is sent once, one at a time, exactly as vLLM's
bench sent it for the reference (completions API, prompt as written, temperature 0 passed
explicitly, max_tokens, ignore_eos), and the texts are compared prompt by prompt with the bench's
own comparison (bench/lossless.py). The reference must have been made with the setup of now
(bench/reference.py): a stale or missing one is refused before anything is sent.
"""

from __future__ import annotations

from typing import Any

from dsv4setup.bench.client import probe_vllm
from dsv4setup.bench.datasets import load_dataset
from dsv4setup.bench.lossless import beyond_tolerance, compare_texts
from dsv4setup.bench.matrix import Shape
from dsv4setup.bench.reference import (
    Reference,
    fingerprint,
    read_reference,
    refuse_if_stale,
    setup_fingerprint,
)
from dsv4setup.core.errors import UsageError
from dsv4setup.engine import RunContext
from dsv4setup.serve.launch import effective_profile, render_command


def current_fingerprint(ctx: RunContext, reference: Reference) -> tuple[dict[str, Any] | None, str]:
    """The reference's fingerprint as the setup of now would make it; (None, why) when it cannot be made."""
    profile = ctx.profile
    spec = profile.bench.shapes.get(reference.shape)
    if spec is None:
        return None, f"the profile has no bench shape {reference.shape!r} any more"
    try:
        prompts = load_dataset(reference.dataset_source, profile.serve.max_model_len,
                               int(reference.doc["fit_output_len"]))
    except UsageError as exc:
        return None, f"its prompts cannot be read again: {exc.message}"
    if prompts is None:
        return None, "it names the random dataset, whose prompts are not saved"
    argv, env = render_command(ctx, effective_profile(ctx))
    setup = setup_fingerprint(profile, ctx.state, ctx.workdir, probe_vllm(ctx.workdir.venv_python), argv, env)
    shape = Shape(reference.shape, spec.input_len, spec.output_len, spec.num_prompts)
    return fingerprint(setup, prompts, shape, profile.bench.seed), ""


def checked_reference(ctx: RunContext) -> Reference:
    """The stored reference, made with the setup of now; StepError (with the refreshing bench) otherwise."""
    reference = read_reference(ctx.workdir, ctx.profile)
    now, why_not = current_fingerprint(ctx, reference)
    refuse_if_stale(ctx.workdir, reference, now, why_not)
    return reference


def _complete(client: Any, model: str | None, prompt: str, sampling: dict[str, Any]) -> str | None:
    import openai

    try:
        response = client.completions.create(
            model=model, prompt=prompt, max_tokens=sampling["max_tokens"], temperature=sampling["temperature"],
            extra_body={"ignore_eos": sampling["ignore_eos"], "repetition_penalty": sampling["repetition_penalty"]})
    except openai.OpenAIError:
        return None  # counted as differing (no text), like a failed request in the bench
    return str(response.choices[0].text) if response.choices else None


def compare_with_reference(client: Any, model: str | None, reference: Reference, k: int, workdir_file: str,
                           tolerance: float | None) -> dict[str, Any]:
    """Every reference prompt sent once, one at a time; identical count, differing prompts, judged by the tolerance."""
    sampling = reference.fingerprint["sampling"]
    texts = [_complete(client, model, prompt, sampling) for prompt in reference.prompts]
    result = compare_texts(reference.texts, texts, reference.prompts)
    beyond = beyond_tolerance({str(k): {"identical": result["identical"], "total": result["total"]}}, tolerance)
    doc = reference.doc
    return {"reference": {"file": workdir_file, "run_id": doc["run_id"], "created_at": doc["created_at"], "k": 0,
                          "shape": reference.shape, "dataset": doc["fingerprint"]["dataset"]},
            "num_speculative_tokens": k, **result, "tolerance": tolerance, "ok": not beyond}


def lossless_summary(result: dict[str, Any]) -> str:
    tolerance = result["tolerance"]
    judged = ("tolerance unmeasured for this profile: reported, not judged" if tolerance is None
              else f"tolerance {tolerance:.0%} of prompts (bench.lossless_tolerance)")
    first = result["differing"][0] if result["differing"] else None
    where = (f"; first: prompt #{first['index']} differs at character {first['position']}: reference "
             f"{first['reference']!r}, now {first['candidate']!r}" if first else "")
    return (f"greedy text at k={result['num_speculative_tokens']} equals the k=0 reference on {result['identical']}/"
            f"{result['total']} prompts ({judged}){where}")
