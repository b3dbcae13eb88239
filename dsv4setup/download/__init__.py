"""download: the checkpoint on disk, verified.

Parts: `transfer` (resumable, concurrent, verified download with huggingface_hub), `disk` (free-space
preflight), `progress` (byte progress over many transfers), `verify` (file identity against the hub,
the download manifest), `step` (the runbook's `download` step).
"""
