"""vLLM command-line flags that a profile manages as typed fields.

`serve.extra_args` may not repeat them (the rendered value and the extra one would fight,
and argparse silently keeps the last), and the recipe importer maps them back to fields.
vLLM's parser accepts `--max_model_len` for `--max-model-len`, `--flag=value` for
`--flag value`, `--flag.key value` for a field of a JSON flag, any unambiguous prefix of a
flag (`--hos` is `--host`, `-t` is `-tp`) and `--config FILE`, a YAML file whose keys are
flags. `conflicts` resolves extra_args by the same rules, so none of these spellings can
reach a guarded flag (a server bound to 0.0.0.0 without an API key, behind the port check).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from dsv4setup.core.fsutil import atomic_write_text

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
    "--device-memory-utilization": ("serve.gpu_memory_utilization", "float"),
    "--kv-cache-dtype": ("serve.kv_cache_dtype", "str"),
    "--block-size": ("serve.block_size", "int"),
    "--dtype": ("serve.dtype", "str"),
    "--trust-remote-code": ("serve.trust_remote_code", "bool"),
    "--enforce-eager": ("serve.enforce_eager", "bool"),
    "--disable-custom-all-reduce": ("serve.disable_custom_all_reduce", "bool"),
    "--speculative-config": ("spec.num_speculative_tokens", "spec"),
    "-sc": ("spec.num_speculative_tokens", "spec"),
}

# flags no profile may carry in extra_args, and why
RESERVED_FLAGS: dict[str, str] = {
    "--model": "the model directory comes from the profile's model section",
    "--api-key": "secrets never go on the command line: the serve step passes VLLM_API_KEY in the environment",
    "--hf-config-path": "render adds it from the checkpoint step's output",
    "--distributed-executor-backend": "render sets it to ray when the profile declares multinode",
    "--enable-custom-all-reduce": "vLLM 0.33's inverse of --disable-custom-all-reduce: set "
                                  "serve.disable_custom_all_reduce=false instead",
}


CONFIG_FLAG = "--config"


def normalize(token: str) -> str | None:
    """The canonical flag name of an argv token (no `=value`, `_` as `-`), or None when it is a value."""
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


def option_name(token: str) -> str | None:
    """The option an argv token names, as argparse looks it up: no `=value`, no `.field` (`--a.b=1` is
    the field `b` of the JSON flag `--a`)."""
    flag = normalize(token)
    if flag is None:
        return None
    return flag.split("=", 1)[0].split(".", 1)[0]


def _guarded() -> dict[str, str]:
    """Every guarded option string (`--no-` forms included) -> why extra_args may not reach it."""
    why = {flag: f"{flag} is not allowed in serve.extra_args: {reason}" for flag, reason in RESERVED_FLAGS.items()}
    for flag, (key, kind) in FIELD_FLAGS.items():
        why[flag] = f"{flag} is rendered from {key}: set {key} instead of repeating the flag"
        if kind == "bool":
            why["--no-" + flag[2:]] = f"--no-{flag[2:]} is rendered from {key}: set {key}=false instead"
    return why


GUARDED = _guarded()


def _resolve(name: str) -> tuple[str, str] | None:
    """(guarded option, why) when argparse would take `name` for a guarded option: the option
    itself, or a prefix of it (an abbreviation when unique, an error in vLLM when ambiguous)."""
    if name in ("--", "-"):
        return name, "a bare `--` ends vLLM's options: the arguments after it are not flags"
    if name in GUARDED:
        return name, GUARDED[name]
    for option, why in GUARDED.items():
        if option.startswith(name) and name.startswith(option[:2]):
            return option, f"{name} is an abbreviation vLLM expands to {option}; {why}"
    return None


def conflict(token: str) -> str | None:
    """Why this extra_args token may not be there, or None when it is fine (see `conflicts` for --config)."""
    name = option_name(token)
    found = _resolve(name) if name is not None else None
    return found[1] if found else None


def _checked_config(path_text: str | None) -> tuple[bytes, list[str]]:
    """A `--config FILE`'s bytes, read once, and what they would set that extra_args may not (vLLM turns
    each key into `--key`); the bytes are only to be used when there is no problem."""
    if path_text is None:
        return b"", ["--config needs a file"]
    path = Path(path_text)
    if not path.is_absolute():
        return b"", [f"--config {path_text}: give an absolute path (vLLM reads it from its own working directory)"]
    try:
        data = path.read_bytes()
        doc = yaml.safe_load(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return b"", [f"--config {path_text} cannot be read as YAML ({exc}); it must be readable when the profile "
                     "is loaded"]
    if not isinstance(doc, dict):
        return b"", [f"--config {path_text} is not a YAML mapping of flag names to values"]
    problems = []
    for key, value in doc.items():
        why = conflict(f"--no-{key}" if value is False else f"--{key}")
        if why:
            problems.append(f"--config {path_text} sets {key!r}: {why}")
    return data, problems


def _config_file(args: Sequence[str], i: int) -> tuple[int, bool, str | None] | None:
    """When args[i] resolves to `--config`: (index of the token holding its file, whether that is args[i]
    itself as `--config=FILE`, the file: None when there is none)."""
    token = args[i]
    name = option_name(token)
    if name is None or not CONFIG_FLAG.startswith(name) or len(name) <= 2 or _resolve(name) is not None:
        return None
    if "=" in token:
        return i, True, token.split("=", 1)[1]
    return i + 1, False, args[i + 1] if i + 1 < len(args) else None


def conflicts(args: Sequence[str]) -> list[str]:
    """Every reason serve.extra_args may not be used as it is (empty when fine).

    A token resolving to `--config` brings its file's keys in; its file is the text after `=`
    or the next token.
    """
    problems: list[str] = []
    for i, token in enumerate(args):
        if (config := _config_file(args, i)) is not None:
            problems += _checked_config(config[2])[1]
        elif option_name(token) is not None and (why := conflict(token)):
            problems.append(why)
    return problems


def pin_config_files(args: Sequence[str], dest: Path) -> list[str]:
    """extra_args with each `--config FILE` naming a copy in `dest` of the bytes checked now, named by their
    sha256 (`vllm-config.<sha256>.yaml`: the serve command, the plan and the command fingerprint carry it).

    vLLM reads the file when it starts, minutes or days after the profile was checked: it reads the copy,
    so what it gets is what was checked. A change of the user's file reaches the server only through the
    next check (the next `up`), with a new name, so the serve command (and its fingerprint) changes too.
    Raises ValueError when the file, read now, is not acceptable."""
    pinned = list(args)
    for i in range(len(args)):
        config = _config_file(args, i)
        if config is None:
            continue
        index, inline, path_text = config
        data, problems = _checked_config(path_text)
        if problems or path_text is None:
            raise ValueError("; ".join(problems))
        digest = hashlib.sha256(data).hexdigest()
        copy = dest / f"vllm-config.{digest}.yaml"
        if copy.is_symlink() or not copy.is_file() or hashlib.sha256(copy.read_bytes()).hexdigest() != digest:
            dest.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write_text(copy, data.decode("utf-8"), 0o600)
        pinned[index] = f"{args[i].split('=', 1)[0]}={copy}" if inline else str(copy)
    return pinned
