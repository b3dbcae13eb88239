"""dsv4setup: bare Linux GPU box -> verified DeepSeek-V4-Flash + MTP server on vLLM."""

__version__ = "0.1.0"
