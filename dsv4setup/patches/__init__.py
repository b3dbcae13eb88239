"""patches: vLLM patches as data, applied atomically to the serving venv's vLLM.

Parts: `manifest` (patches/manifest.yaml: what each patch changes), `target` (the vLLM being
patched), `status` (each patch's state on a target), `apply` (atomic apply and revert),
`backups` (originals kept for revert), `difftool` (GNU patch on staged copies), `report` (the
`dsv4setup patches` document), `outputs` (what the step records), `step` (the runbook's `patches` step).
"""
