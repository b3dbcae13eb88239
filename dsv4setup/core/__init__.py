"""The shared core: knows nothing of typer, rich or any step.

Parts: `engine` (ordered steps, fingerprints, verified postconditions, resume), `state` (the state
file), `errors` (the one error type and exit codes), `finding` (the one verdict type), `workdir`,
`lock`, `proc` (step logs and subprocesses), `secrets` (redaction), `fsutil` (atomic writes),
`resources` (shipped data), `jsonschemas` (published schemas), `status` (the status document).
"""
