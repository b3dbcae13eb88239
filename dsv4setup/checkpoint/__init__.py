"""checkpoint: an MTP-aware lint of a checkpoint's metadata, local or on the hub (headers only).

Parts: `meta` / `remote` (metadata read locally or from the hub), `lint` + `lint_rules.yaml` +
`rules` (pure checks), `names` + `fix` (ignore-list correction into a config copy), `service`
(what the CLI, the steps and doctor call), `step` (the runbook's `checkpoint` step).
Imports stay lazy: huggingface_hub is only loaded when the hub is used.
"""
