"""What the download step records for later steps (validated by the engine before saving).

Every route (local, generate, repo) records path, route, repo, revision, files and bytes; a hub
download adds where the files are, the revision asked for, what this run fetched and verified.
"""

from __future__ import annotations

from dsv4setup.core.outputs import StepOutputs


class DownloadOutputs(StepOutputs):
    step = "download"

    path: str  # the checkpoint directory vLLM loads (read by the checkpoint step)
    route: str
    repo: str | None
    revision: str | None  # the commit downloaded
    files: int
    bytes: int
    generator: str | None = None
    root: str | None = None
    requested_revision: str | None = None
    mode: str | None = None
    fetched_bytes: int | None = None
    refetched: list[str] | None = None
    verified: str | None = None
