"""`dsv4setup profile set` keeps overrides in the workdir's dsv4setup.yaml, checked before writing."""

from __future__ import annotations

import json

import pytest

from dsv4setup.cli import main
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.resolve import resolve_profile


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def test_profile_set_persists_and_plan_sees_it(capsys: pytest.CaptureFixture[str], workdir: Workdir) -> None:
    code, out, _ = run(capsys, "profile", "set", "--workdir", str(workdir.root), "--profile", "h200-tp2",
                       "serve.disable_custom_all_reduce=true", "spec.num_speculative_tokens=3", "--json")
    assert code == 0
    doc = json.loads(out)
    validate_document(doc)
    assert doc["set"]["spec.num_speculative_tokens"] == f"workdir:{workdir.overrides_file}"
    resolved = resolve_profile(workdir, "h200-tp2", [])
    assert resolved.profile.serve.disable_custom_all_reduce and resolved.profile.spec.num_speculative_tokens == 3


def test_profile_set_bad_value_exit_2_and_file_unchanged(capsys: pytest.CaptureFixture[str],
                                                         workdir: Workdir) -> None:
    assert run(capsys, "profile", "set", "--workdir", str(workdir.root), "--profile", "h200-tp2",
               "spec.num_speculative_tokens=2")[0] == 0
    before = workdir.overrides_file.read_text()
    code, _, err = run(capsys, "profile", "set", "--workdir", str(workdir.root), "--profile", "h200-tp2",
                       "serve.port=8001", "serve.port=99999")
    assert code == 2 and "serve.port" in err and "65535" in err
    assert workdir.overrides_file.read_text() == before
    code, _, err = run(capsys, "profile", "set", "--workdir", str(workdir.root), "--profile", "h200-tp2",
                       "serve.no_such_key=1")
    assert code == 2 and workdir.overrides_file.read_text() == before
