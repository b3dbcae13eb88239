"""The vLLM server manager: start detached, readiness, known failures, stall detection, stop.

- command.py: the profile rendered into the exact `vllm serve` argv and env, and the plan document
- launch.py: start (or adopt) the server for a run's plan and wait until ready (the serve step, the bench)
- step.py: the runbook's `serve` step
- metrics.py: vLLM's /metrics, the spec-decode counters
- process.py: start in its own session, records (run/serve.json, run/serve.pid), identity, stop
- readiness.py: /health polling, phase from the log, failure and stall detection
- signatures.py: the known-failure table (dsv4setup/known_failures.yaml)
- apikey.py: the API key of a server bound beyond loopback
- manager.py: what the CLI and the steps call (status, down)
"""
