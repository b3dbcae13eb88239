"""The lossless reference: the k=0 greedy texts of the last bench on a prompt set, with what made them.

`smoke --lossless` compares the running server's greedy output against it without restarting the
server (see smoke/lossless.py). A text is only worth comparing with one made the same way, so the
reference carries a fingerprint of everything that decides greedy tokens but k: the vLLM build, the
patches applied, every checkpoint file's hash, the server's arguments and environment (dtype,
attention backend ...), the prompts (dataset name and sha256) and the sampling (temperature 0,
max_tokens, ignore_eos, no chat template, one request at a time). The fingerprint is computed the same
way when the bench writes the reference and when smoke checks it against the setup of now; any
difference makes the reference stale, refused with the bench command that refreshes it.

Only a bench on a prompt set writes it (vLLM's random dataset makes its prompts from token ids that
are not saved), from the k=0 cells of one shape (the profile's default shape when measured) at
concurrency 1, every category complete; otherwise the previous reference stays.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4setup.bench.client import VllmInfo
from dsv4setup.bench.datasets import MIX, PromptSet
from dsv4setup.bench.fingerprint import checkpoint_part, flatten, measured_env, now_utc, patches_part, serve_args
from dsv4setup.bench.matrix import TEMPERATURE, Shape
from dsv4setup.core.errors import StepError
from dsv4setup.core.fsutil import atomic_write_json
from dsv4setup.core.state import State
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.model import Profile
from dsv4setup.profiles.paths import checkpoint_dir

REFERENCE_SCHEMA = "dsv4setup.lossless-reference/1"
REFERENCE_NAME = "lossless-reference.json"
HASH_LIMIT = 256 * 2**20  # bigger files (a 150 GB checkpoint's shards) are named by the hub's sha256, else size+mtime
CONCURRENCY = 1  # smoke sends the prompts one at a time: the reference is made the same way


def reference_file(workdir: Workdir) -> Path:
    return workdir.bench_dir / REFERENCE_NAME


def sampling_part(shape: Shape, seed: int) -> dict[str, Any]:
    """How every reference prompt is generated (vLLM's bench sends these with each completion request)."""
    return {"temperature": TEMPERATURE, "max_tokens": shape.output_len, "ignore_eos": True,
            "repetition_penalty": 1.0, "chat_template": False, "seed": seed, "concurrency": CONCURRENCY}


def _file_hash(path: Path, hub: Mapping[str, Any], rel: str) -> str:
    remote = hub.get(rel)
    if remote is not None and getattr(remote, "sha256", None):
        return f"sha256:{remote.sha256}"
    stat = path.stat()
    if stat.st_size > HASH_LIMIT:
        return f"size:{stat.st_size},mtime_ns:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(2**20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def checkpoint_hashes(path: Path) -> dict[str, str]:
    """Every file of the checkpoint (hidden ones aside): the sha256 the hub verified, else its own."""
    from dsv4setup.download.verify import read_manifest

    manifest = read_manifest(path)
    hub = manifest.expected if manifest is not None else {}
    if not path.is_dir():
        return {}
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return {p.relative_to(path).as_posix(): _file_hash(p, hub, p.relative_to(path).as_posix()) for p in files}


def setup_fingerprint(profile: Profile, state: State, workdir: Workdir, info: VllmInfo, argv: list[str],
                      env: Mapping[str, str]) -> dict[str, Any]:
    """What decides the greedy tokens, but k and the prompts: vLLM, patches, checkpoint files, server arguments."""
    outputs = {name: dict(rec.outputs) for name, rec in state.steps.items()}
    inputs = {name: dict(rec.fingerprint_inputs) for name, rec in state.steps.items()}
    checkpoint = checkpoint_part(profile, outputs.get("download", {}), inputs.get("download", {}))
    return {"vllm": {"package": info.dist, "version": info.version, "commit": info.commit},
            "patches": patches_part(profile, outputs.get("patches", {})),
            "checkpoint": {**checkpoint, "files": checkpoint_hashes(checkpoint_dir(profile, workdir))},
            "serve": {"args": serve_args(argv), "env": measured_env(env)}}


def fingerprint(setup: Mapping[str, Any], prompts: PromptSet, shape: Shape, seed: int) -> dict[str, Any]:
    return {**setup, "dataset": {"name": prompts.name, "sha256": prompts.sha256},
            "sampling": sampling_part(shape, seed)}


@dataclass(frozen=True)
class Reference:
    """A stored reference: its fingerprint, how to load its prompts again, and the prompts with their k=0 texts."""

    doc: dict[str, Any]

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.doc["fingerprint"])

    @property
    def prompts(self) -> list[str]:
        return [str(p["prompt"]) for p in self.doc["prompts"]]

    @property
    def texts(self) -> list[str | None]:
        return [p["text"] if isinstance(p["text"], str) else None for p in self.doc["prompts"]]

    @property
    def shape(self) -> str:
        return str(self.doc["shape"])

    @property
    def dataset_source(self) -> str:
        return str(self.doc["dataset_source"])


def build_reference(*, run_id: str, setup: Mapping[str, Any], prompts: PromptSet, dataset_source: str, shape: Shape,
                    seed: int, fit_output_len: int, texts: Mapping[str, Sequence[str | None]]) -> dict[str, Any]:
    """The reference document; `texts` holds each category's k=0 texts in the order of its prompts."""
    entries = []
    for category in prompts.categories():
        for prompt, text in zip(prompts.only(category).prompts, texts[category], strict=True):
            entries.append({"category": category, "prompt": prompt.text, "text": text})
    return {"schema": REFERENCE_SCHEMA, "run_id": run_id, "created_at": now_utc(), "k": 0, "shape": shape.name,
            "dataset_source": dataset_source, "fit_output_len": fit_output_len,
            "fingerprint": fingerprint(setup, prompts, shape, seed), "prompts": entries}


def write_reference(workdir: Workdir, doc: dict[str, Any]) -> Path:
    path = reference_file(workdir)
    atomic_write_json(path, doc)
    return path


def refresh_command(workdir: Workdir, dataset_source: str, shape: str) -> list[str]:
    """The bench that writes a fresh reference: k=0 on that prompt set, that shape, one request at a time."""
    return ["dsv4setup", "bench", "--k", "0", "--dataset", dataset_source, "--shape", shape,
            "--concurrency", str(CONCURRENCY), "--workdir", str(workdir.root)]


def differences(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """'key: reference X, now Y' for each value that differs (file lists and argument lists as wholes)."""
    was, is_ = flatten(json.loads(json.dumps(stored))), flatten(json.loads(json.dumps(now)))
    out = []
    for key in sorted(set(was) | set(is_)):
        if was.get(key) != is_.get(key):
            out.append(f"{key}: reference {_short(was.get(key))}, now {_short(is_.get(key))}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def read_reference(workdir: Workdir, profile: Profile) -> Reference:
    """The stored reference, or a StepError that says there is none (or none readable) and how to make one."""
    path = reference_file(workdir)
    default_shape = profile.bench.default_shape
    command = refresh_command(workdir, MIX, default_shape)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StepError(f"no lossless reference in {path}: `smoke --lossless` compares against the greedy texts "
                        "of the last k=0 bench on a prompt set, and none was stored",
                        fix=f"make one (k=0 on the shipped mix, one request at a time): `{shlex.join(command)}`, "
                            "then run `dsv4setup smoke --lossless` again", command=command) from None
    except (OSError, ValueError) as exc:
        raise StepError(f"the lossless reference {path} cannot be read: {exc}",
                        fix=f"write it again: `{shlex.join(command)}`", command=command) from None
    if not isinstance(doc, dict) or doc.get("schema") != REFERENCE_SCHEMA:
        raise StepError(f"{path} is not a {REFERENCE_SCHEMA} document",
                        fix=f"write it again: `{shlex.join(command)}`", command=command)
    from dsv4setup.core.jsonschemas import validate_document

    try:
        validate_document(doc)
    except Exception as exc:  # noqa: BLE001 - any schema error reads the same: rewrite the file
        raise StepError(f"the lossless reference {path} is damaged: {getattr(exc, 'message', exc)}"[:400],
                        fix=f"write it again: `{shlex.join(command)}`", command=command) from None
    return Reference(doc)


def refuse_if_stale(workdir: Workdir, reference: Reference, now: Mapping[str, Any] | None, why_not: str = "") -> None:
    """A StepError naming what changed since the reference was made (not compared: stale), with its refresh."""
    command = refresh_command(workdir, reference.dataset_source, reference.shape)
    path = reference_file(workdir)
    if now is None:
        changed = [why_not]
    else:
        changed = differences(reference.fingerprint, now)
        if not changed:
            return
    shown = "; ".join(changed[:6]) + (f" (and {len(changed) - 6} more)" if len(changed) > 6 else "")
    raise StepError(f"the lossless reference {path} (bench run {reference.doc['run_id']}) is stale, not compared: "
                    f"it was made with another setup than the server's now: {shown}",
                    fix=f"refresh it with a k=0 bench on the same prompts (it restarts the server and puts it back): "
                        f"`{shlex.join(command)}`, then run `dsv4setup smoke --lossless` again", command=command)
