"""A checkpoint whose config.json auto_map names a module outside the config copy: refused before any write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsv4setup.checkpoint.fix import local_reader, write_config_copy
from dsv4setup.core.fsutil import PathEscapeError


@pytest.mark.parametrize("ref", ["../../escaped/evil.Cfg", "x--../../escaped/evil.Cfg", "/tmp/escaped/evil.Cfg"])
def test_auto_map_names_outside_the_copy_are_refused(tmp_path: Path, ref: str) -> None:
    ckpt = tmp_path / "deep" / "er" / "ckpt"
    ckpt.mkdir(parents=True)
    config = {"model_type": "deepseek_v4", "auto_map": {"AutoConfig": ref}}
    (ckpt / "config.json").write_text(json.dumps(config))
    out = tmp_path / "deep" / "er" / "wd" / "checkpoint-config"
    with pytest.raises(PathEscapeError, match="auto_map"):
        write_config_copy(out, config, [], local_reader(ckpt), str(ckpt))
    assert not out.exists() and not (tmp_path / "deep" / "escaped").exists() and not Path("/tmp/escaped").exists()
    with pytest.raises(PathEscapeError, match="auto_map"):  # nor is anything read from outside the checkpoint
        local_reader(ckpt)("../../../etc/hostname")
