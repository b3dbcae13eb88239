"""smoke: a deterministic chat completion through the official openai client, and the proof from
vLLM's `/metrics` that MTP drafts are made and accepted.

Parts: `probe` (the request and the proof), `report` (the smoke test of a running server and its
report file; the bench calls it too), `step` (the runbook's `smoke` step).
"""
