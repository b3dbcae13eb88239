"""The serving venv and vLLM in it: venv/pip helpers, the wheel, git and source routes, build env."""
