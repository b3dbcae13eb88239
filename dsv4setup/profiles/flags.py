"""vLLM command-line flags that a profile manages as typed fields.

`serve.extra_args` may not repeat them (the rendered value and the extra one would fight,
and argparse silently keeps the last), and the recipe importer maps them back to fields.
vLLM's parser accepts `--max_model_len` for `--max-model-len` and `--flag=value` for
`--flag value`; `normalize` folds those spellings so the checks see one name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

# flag -> (dotted profile key that renders it, how its value is read: int, float, str, bool, spec)
FIELD_FLAGS: dict[str, tuple[str, str]] = {
    "--served-model-name": ("serve.served_model_name", "str"),
    "--host": ("serve.host", "str"),
    "--port": ("serve.port", "int"),
    "--tensor-parallel-size": ("serve.tensor_parallel_size", "int"),
    "-tp": ("serve.tensor_parallel_size", "int"),
    "--max-model-len": ("serve.max_model_len", "int"),
    "--max-num-seqs": ("serve.max_num_seqs", "int"),
    "--max-num-batched-tokens": ("serve.max_num_batched_tokens", "int"),
    "--gpu-memory-utilization": ("serve.gpu_memory_utilization", "float"),
    "--kv-cache-dtype": ("serve.kv_cache_dtype", "str"),
    "--block-size": ("serve.block_size", "int"),
    "--dtype": ("serve.dtype", "str"),
    "--trust-remote-code": ("serve.trust_remote_code", "bool"),
    "--enforce-eager": ("serve.enforce_eager", "bool"),
    "--disable-custom-all-reduce": ("serve.disable_custom_all_reduce", "bool"),
    "--speculative-config": ("spec.num_speculative_tokens", "spec"),
}

# flags no profile may carry in extra_args, and why
RESERVED_FLAGS: dict[str, str] = {
    "--model": "the model directory comes from the profile's model section",
    "--api-key": "secrets never go on the command line: the serve step passes VLLM_API_KEY in the environment",
    "--hf-config-path": "render adds it from the checkpoint step's output",
    "--distributed-executor-backend": "render sets it to ray when the profile declares multinode",
}


def normalize(token: str) -> str | None:
    """The canonical flag name of an argv token, or None when the token is a value."""
    if token.startswith("--"):
        name = token[2:].split("=", 1)[0]
        return "--" + name.replace("_", "-")
    if token.startswith("-") and len(token) > 1 and not token[1].isdigit() and token[1] != ".":
        return token
    return None


def bool_base(flag: str) -> str | None:
    """`--no-enforce-eager` -> `--enforce-eager` when that is a managed boolean flag."""
    if flag.startswith("--no-"):
        base = "--" + flag[5:]
        if FIELD_FLAGS.get(base, ("", ""))[1] == "bool":
            return base
    return None


def pairs(args: Sequence[str]) -> Iterator[tuple[str, str | None, list[str]]]:
    """(canonical flag, value, the tokens as written): `--a=1`, `--a 1` and bare `--switch` (value None)."""
    i = 0
    while i < len(args):
        token = args[i]
        flag = normalize(token)
        if flag is None:
            raise ValueError(f"{token!r} is not a flag (values follow their flag)")
        if token.startswith("--") and "=" in token:
            yield flag, token.split("=", 1)[1], [token]
            i += 1
        elif i + 1 < len(args) and normalize(args[i + 1]) is None:
            yield flag, args[i + 1], [token, args[i + 1]]
            i += 2
        else:
            yield flag, None, [token]
            i += 1


def conflict(token: str) -> str | None:
    """Why this extra_args token may not be there, or None when it is fine."""
    flag = normalize(token)
    if flag is None:
        return None
    if flag in RESERVED_FLAGS:
        return f"{flag} is not allowed in serve.extra_args: {RESERVED_FLAGS[flag]}"
    managed = FIELD_FLAGS.get(flag) or FIELD_FLAGS.get(bool_base(flag) or "")
    if managed:
        return f"{flag} is rendered from {managed[0]}: set that key instead of repeating the flag"
    return None
