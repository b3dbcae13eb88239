"""A hub whose file list names a path outside the destination: the download refuses before writing anything.
The hub is the local test hub (a real HTTP server) with one hostile name added to its listing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dsv4setup.core.fsutil import PathEscapeError
from dsv4setup.download.transfer import Downloader
from tests.checkpoint.conftest import REPO
from tests.checkpoint.hubserver import HubFile, HubServer


@pytest.mark.parametrize("hostile", ["../escaped.json", "sub/../../escaped.json"])
def test_a_file_name_leaving_the_destination_is_refused_before_any_write(
        make_checkpoint: Callable[..., Path], serve_hub: Callable[..., HubServer], tmp_path: Path,
        hostile: str) -> None:
    src = make_checkpoint()
    hub = serve_hub({REPO: src})
    config = hub.file_info(REPO, "config.json")
    hub._state.snapshots[REPO]["main"].files[hostile] = HubFile(hostile, config.local, config.size, False, None,
                                                                config.blob_id, None)
    dest = tmp_path / "wd" / "models" / "ckpt"
    with pytest.raises(PathEscapeError, match=f"the hub's file list of {REPO}"):
        Downloader(REPO, "main", dest).run()
    assert not (tmp_path / "wd").exists()
    assert hub.file_requests(REPO) == []
