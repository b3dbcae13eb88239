"""fsutil.contained: a path from outside data stays under its root, or a clear error names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4setup.core.errors import UsageError
from dsv4setup.core.fsutil import PathEscapeError, contained


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "", ".", "~/x", "a\0b", "out/x"])
def test_hostile_relative_paths_are_refused(tmp_path: Path, rel: str) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)  # a link inside the root that leads out
    with pytest.raises(PathEscapeError) as raised:
        contained(tmp_path / "root", rel, "the test's list")
    assert raised.value.message.startswith(f"the test's list names {rel!r}, which is not a path inside")
    assert "no .." in (raised.value.fix or "")


def test_ordinary_names_resolve_under_the_root_even_before_it_exists(tmp_path: Path) -> None:
    wanted = tmp_path / "new/sub/model-00001.safetensors"
    assert contained(tmp_path / "new", "sub/model-00001.safetensors", "x") == wanted
    assert contained(tmp_path, "a/./b..c", "x") == tmp_path / "a/b..c"


def test_the_error_class_is_the_callers_choice(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        contained(tmp_path, "../x", "the profile name", UsageError)
