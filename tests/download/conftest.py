"""Download tests share the local hub server fixtures of the checkpoint tests."""

from tests.checkpoint.conftest import hf_env, make_checkpoint, serve_hub  # noqa: F401
