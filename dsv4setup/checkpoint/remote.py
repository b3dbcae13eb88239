"""Checkpoint metadata from the hub, before any weight is downloaded.

One model-info call lists the files with sizes; config.json and the index are small
downloads; each shard header comes from huggingface_hub's safetensors metadata API, which
asks for the first 100 kB with an HTTP Range request (and the rest of a larger header with a
second one). A 160 GB checkpoint costs a few MB.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from dsv4setup.checkpoint.fix import FileReader
from dsv4setup.checkpoint.meta import (
    CONFIG_FILE,
    INDEX_FILE,
    CheckpointMeta,
    ShardMeta,
    TensorMeta,
    apply_index,
    header_problem,
    parse_config,
    plan_shards,
)
from dsv4setup.core.secrets import hf_token
from dsv4setup.hub.access import explain, hub_api, hub_endpoint, hub_exceptions

if TYPE_CHECKING:
    from huggingface_hub import HfApi

HEADER_WORKERS = 8


def split_target(target: str) -> tuple[str, str]:
    """'ORG/NAME@REV' -> (repo, rev); no @ means main."""
    repo, _, revision = target.partition("@")
    return repo, revision or "main"


def _shard_header(api: HfApi, repo: str, commit: str, name: str, size: int | None) -> ShardMeta:
    from huggingface_hub.errors import RemoteEntryNotFoundError, SafetensorsParsingError

    shard = ShardMeta(name, exists=size is not None, size=size)
    if not shard.exists:
        return shard
    try:
        parsed = api.parse_safetensors_file_metadata(repo, name, revision=commit)
    except RemoteEntryNotFoundError:
        shard.exists = False
        return shard
    except SafetensorsParsingError as exc:
        shard.error = f"header does not parse: {exc}"
        return shard
    shard.tensors = {k: TensorMeta(v.dtype, tuple(v.shape), tuple(v.data_offsets))  # type: ignore[arg-type]
                     for k, v in parsed.tensors.items()}
    shard.header_bytes = _header_length(shard)
    shard.error = header_problem(shard.tensors, shard.header_bytes, size)
    return shard


def _header_length(shard: ShardMeta) -> int:
    """8 + the compact JSON length: a lower bound of the real header size (huggingface_hub does not
    return it; safetensors writes compact JSON, padded to 8 bytes). Used for totals and the truncation check."""
    import json

    doc = {k: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": list(t.offsets)}
           for k, t in shard.tensors.items()}
    return 8 + len(json.dumps(doc, separators=(",", ":")))


def read_remote(repo: str, revision: str = "main", token: str | None = None) -> CheckpointMeta:
    """CheckpointMeta of REPO@REVISION from the hub (HF_ENDPOINT honoured). Raises HubError."""
    from huggingface_hub import hf_hub_download

    token = token if token is not None else hf_token()
    api = hub_api(token)
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True)
    except hub_exceptions() as exc:
        raise explain(exc, repo, revision, token) from None
    commit = info.sha or revision
    files = {s.rfilename: s.size for s in info.siblings or []}
    meta = CheckpointMeta(source=f"{repo}@{revision}", kind="remote", files=files, revision=revision, commit=commit)
    with tempfile.TemporaryDirectory(prefix="dsv4setup-lint-") as cache:
        def small(name: str) -> bytes:
            path = hf_hub_download(repo, name, revision=commit, cache_dir=cache, token=token or False,
                                   endpoint=hub_endpoint())
            return Path(path).read_bytes()

        try:
            if CONFIG_FILE in files:
                meta.config, meta.config_error = parse_config(small(CONFIG_FILE))
            else:
                meta.config_error = f"no {CONFIG_FILE} in {repo}@{revision}"
            if INDEX_FILE in files:
                apply_index(meta, small(INDEX_FILE))
        except hub_exceptions() as exc:
            raise explain(exc, repo, revision, token) from None
    plan_shards(meta)
    names = [*meta.listed, *meta.orphans]
    try:
        with ThreadPoolExecutor(max_workers=HEADER_WORKERS) as pool:
            shards = list(pool.map(lambda n: _shard_header(api, repo, commit, n, files.get(n)), names))
    except hub_exceptions() as exc:
        raise explain(exc, repo, revision, token) from None
    meta.shards = {s.name: s for s in shards}
    return meta


def remote_reader(repo: str, commit: str, files: dict[str, int | None], token: str | None = None) -> FileReader:
    """Read small files of the repo (for the config fix): None for files the repo does not have."""
    from huggingface_hub import hf_hub_download

    token = token if token is not None else hf_token()

    def read(name: str) -> bytes | None:
        if name not in files:
            return None
        with tempfile.TemporaryDirectory(prefix="dsv4setup-fix-") as cache:
            try:
                path = hf_hub_download(repo, name, revision=commit, cache_dir=cache, token=token or False,
                                       endpoint=hub_endpoint())
            except hub_exceptions() as exc:
                raise explain(exc, repo, commit, token) from None
            return Path(path).read_bytes()

    return read
