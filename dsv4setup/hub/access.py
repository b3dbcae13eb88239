"""Talking to the hub: which endpoint, which token, and what each failure means for the user.

huggingface_hub reads `HF_ENDPOINT` once, at import; we read it at call time and pass it
explicitly, so a mirror (or the test suite's local hub) set later in the process is honoured.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from dsv4setup.core.errors import DsvError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKENS_URL = "https://huggingface.co/settings/tokens"


class HubError(DsvError):
    """The hub refused, or could not be reached: message says which, fix says what to do."""


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_api(token: str | None) -> HfApi:
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint(), token=token or False)


def explain(exc: BaseException, repo: str, revision: str, token: str | None) -> HubError:
    """Turn a huggingface_hub / httpx error into a message and an exact fix (never the token)."""
    import httpx2
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        return explain(exc.__cause__, repo, revision, token)  # "not cached either": the hub error is the news
    endpoint = hub_endpoint()
    page = f"{endpoint}/{repo}"
    set_token = f"create a read token at {TOKENS_URL} and `export HF_TOKEN=...`, then run again"
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError("HF_HUB_OFFLINE=1 is set, so the hub is not asked",
                        fix="unset HF_HUB_OFFLINE for the download, or point the profile at a local copy: "
                             "--set model.local_path=DIR")
    if isinstance(exc, GatedRepoError):
        return gated_error(repo, token)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code == 401 \
            and "Invalid credentials" in (exc.server_message or str(exc)):
        return HubError("the hub rejected the Hugging Face token (invalid or expired)",
                        fix=f"{set_token}; for a public repo you may also unset HF_TOKEN")
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"revision {revision!r} does not exist in {repo}",
                        fix="pin an existing commit: --set model.revision=<40-hex sha> "
                             f"(history: {page}/commits/main)")
    if isinstance(exc, RepositoryNotFoundError):
        who = "your token" if token else "anonymous requests (no HF_TOKEN)"
        return HubError(f"repository {repo} not found at {endpoint}, or private and not visible to {who}",
                        fix="check model.repo (e.g. --set model.repo=ORG/NAME)"
                             + ("" if token else f"; for a private repo {set_token}"))
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubError(f"a file listed for {repo}@{revision} is missing on the hub: {exc.response.url}",
                        fix="the revision moved while downloading: pin a commit with --set model.revision=<sha> "
                             "and run again")
    if isinstance(exc, DisabledRepoError):
        return HubError(f"{repo} is disabled on the hub", fix="use another checkpoint (--set model.repo=ORG/NAME)")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 403:
            return HubError(f"the hub refused access to {repo} (403)",
                            fix="a fine-grained token needs 'read access to contents of public gated repos' "
                                 f"(or to this repo); {set_token}")
        if status == 429 or status >= 500:
            return HubError(f"the hub answered {status} for {repo} (rate limit or outage)",
                            fix="wait a few minutes and run the same command again (a download keeps its "
                                 "finished files and resumes the partial ones)")
        return HubError(f"the hub answered {status} for {repo}: {exc.server_message or exc}",
                        fix=f"check {page} in a browser; run again with -v for details")
    if isinstance(exc, httpx2.HTTPError | ConnectionError | TimeoutError):
        return HubError(f"cannot reach the Hugging Face hub at {endpoint}: {type(exc).__name__}: {exc}",
                        fix="check the network and proxy (HTTPS_PROXY), or HF_ENDPOINT for a mirror; on an "
                             "offline machine copy the checkpoint over and use --set model.local_path=DIR")
    return HubError(f"hub request for {repo}@{revision} failed: {type(exc).__name__}: {exc}",
                    fix="run again with -v for the traceback")


def gated_error(repo: str, token: str | None) -> HubError:
    page = f"{hub_endpoint()}/{repo}"
    if token is None:
        return HubError(f"{repo} is gated: its files need a token of an account that accepted its terms",
                        fix=f"open {page}, accept the terms, then create a read token at {TOKENS_URL} and "
                             "`export HF_TOKEN=...`, then run again")
    return HubError(f"{repo} is gated and your token's account is not in its authorized list (yet)",
                    fix=f"request access at {page} and wait for the approval, or export the HF_TOKEN "
                         "of an account that has access")


@contextlib.contextmanager
def hub_logs_to(write: Callable[[str], None]) -> Iterator[None]:
    """Send huggingface_hub's own log lines (retries, resumes) to `write` instead of stderr, meanwhile."""
    import logging

    logger = logging.getLogger("huggingface_hub")

    class _Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            write(f"huggingface_hub: {record.getMessage()}")

    saved = logger.handlers[:]
    forward = _Forward(level=logging.INFO)
    logger.handlers = [forward]
    try:
        yield
    finally:
        logger.handlers = saved


def hub_exceptions() -> tuple[type[BaseException], ...]:
    """The exception types `explain` knows (what hub calls may raise besides bugs)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    return (HfHubHTTPError, OfflineModeIsEnabled, LocalEntryNotFoundError, httpx2.HTTPError, ConnectionError,
            TimeoutError)
