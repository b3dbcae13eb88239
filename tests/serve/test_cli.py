"""The serve commands' CLI: JSON documents valid against their schemas, exit codes, no-op down."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.process import ServerRecord, owner_refusal, read_record, segment_refusal, write_record
from tests.faults.tally import attack

from .conftest import validate


def dsv4setup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsv4setup", *args], capture_output=True, text=True, timeout=120)


def test_tiny_model_command_writes_the_checkpoint_and_reports_it(tmp_path: Path) -> None:
    result = dsv4setup("tiny-model", str(tmp_path / "tiny"), "--seed", "3", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate(doc, "tiny-model")
    assert doc["path"] == str(tmp_path / "tiny") and doc["seed"] == 3 and doc["answer_word"] == "ok"
    assert doc["kind"] == "easy"
    assert {f["name"] for f in doc["files"]} >= {"config.json", "model.safetensors", "tokenizer.json"}
    human = dsv4setup("tiny-model", str(tmp_path / "again"))
    assert human.returncode == 0 and "answers 'ok'" in human.stderr and human.stdout == ""


def test_tiny_model_varied_kind_and_an_unknown_kind_is_a_usage_error(tmp_path: Path) -> None:
    result = dsv4setup("tiny-model", str(tmp_path / "varied"), "--kind", "varied", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate(doc, "tiny-model")
    assert doc["kind"] == "varied" and doc["answer_word"] is None
    easy = json.loads(dsv4setup("tiny-model", str(tmp_path / "easy"), "--json").stdout)
    sha = {d["kind"]: {f["name"]: f["sha256"] for f in d["files"]} for d in (doc, easy)}
    assert sha["varied"]["model.safetensors"] != sha["easy"]["model.safetensors"]
    assert sha["varied"]["tokenizer.json"] == sha["easy"]["tokenizer.json"]  # one tokenizer for both
    bad = dsv4setup("tiny-model", str(tmp_path / "bad"), "--kind", "hard", "--json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["reference"] == "usage" and "varied" in bad.stdout
    assert not (tmp_path / "bad").exists()


def test_down_with_nothing_running_is_a_clean_no_op(workdir: Workdir) -> None:
    result = dsv4setup("down", "--workdir", str(workdir.root), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate(doc, "down")
    assert doc["was_running"] is False and doc["pids"] == []
    human = dsv4setup("down", "--workdir", str(workdir.root))
    assert human.returncode == 0 and "no server is running" in human.stderr


def test_smoke_without_a_served_model_is_a_usage_error_naming_the_missing_step(workdir: Workdir) -> None:
    result = dsv4setup("smoke", "--workdir", str(workdir.root), "--profile", "cpu-tiny", "--json")
    assert result.returncode == 2, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "dsv4setup.error/2" and "needs step serve" in doc["message"]


def _record_naming(workdir: Workdir, segments: list[str], tmpdir: str | None) -> None:
    """A record of a server that is gone (pid of an exited process), naming these leftovers."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = ServerRecord(pid=int(gone.stdout), create_time=0.0, serve_id=uuid.uuid4().hex, host="127.0.0.1",
                          port=1, argv=["vllm"], command_fingerprint="0", log=str(workdir.log_file("serve")),
                          log_offset=0, tmpdir=tmpdir, segments=segments)
    write_record(workdir, record)


@pytest.mark.security
def test_down_removes_only_segments_provably_ours_and_refuses_what_the_record_merely_names(
        workdir: Workdir, tmp_path: Path) -> None:
    """Issue 24: run/serve.json is a file anyone with the workdir edits, and `down` may run as root. A
    record naming a file outside /dev/shm, a /dev/shm entry not ours by name, one reached through `..`,
    a symlink, and (as root) a segment and a temp dir of another user: each survives, `down` says why.
    The one segment that is ours by place, name and owner is removed."""
    tag = uuid.uuid4().hex[:12]
    outside = tmp_path / f"psm_lows{tag}"  # our marker in its name, but outside /dev/shm
    outside.write_text("keep")
    not_ours_by_name = Path(f"/dev/shm/lows-test-{tag}")
    ours = Path(f"/dev/shm/psm_lowsours{tag}")
    link = Path(f"/dev/shm/psm_lowslink{tag}")
    others_segment = Path(f"/dev/shm/psm_lowsnobody{tag}")
    others_tmpdir = tmp_path / "dsv4setup-serve-nobody"
    created = [not_ours_by_name, ours, others_segment]
    try:
        for path in created:
            path.write_text("x")
        link.symlink_to(outside)
        named = {str(outside): "not in /dev/shm/", str(not_ours_by_name): "not one of our segments",
                 f"/dev/shm/../{outside.relative_to('/')}": "not an entry directly in /dev/shm/",
                 str(link): "a symbolic link"}
        tmpdir = None
        if os.geteuid() == 0:  # only root can make a file of another user; as root `down` must not touch it
            os.chown(others_segment, 65534, 65534)
            others_tmpdir.mkdir()
            os.chown(others_tmpdir, 65534, 65534)
            named[str(others_segment)] = "owned by uid 65534"
            tmpdir = str(others_tmpdir)
        _record_naming(workdir, [*named, str(ours)], tmpdir)
        result = dsv4setup("down", "--workdir", str(workdir.root), "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        validate(doc, "down")
        reasons = {x["path"]: x["reason"] for x in doc["refused"]}
        for path in [*named, *([tmpdir] if tmpdir else [])]:
            shown = path.replace(str(tmp_path), "<tmp>").replace(tag, "<tag>")
            attack("files", f"run/serve.json naming {shown} for `down`",
                   got=f"refused: {reasons.get(path, 'not refused')}", reached=path in doc["removed"])
        assert doc["removed"] == [str(ours)] and not ours.exists()
        assert set(reasons) == set(named) | ({tmpdir} if tmpdir else set())
        for path, why in named.items():
            assert why in reasons[path], (path, reasons[path])
            assert path in doc["message"]
        if tmpdir:
            assert "owned by uid 65534" in reasons[tmpdir] and others_tmpdir.is_dir()
        assert outside.read_text() == "keep" and link.is_symlink()
        assert not_ours_by_name.exists() and others_segment.exists()
        assert read_record(workdir) is None  # the record is done with: the next `down` is a no-op
    finally:
        for path in [*created, link]:
            path.unlink(missing_ok=True)


def test_segment_place_name_and_owner_judgements() -> None:
    assert segment_refusal("/dev/shm/psm_1a2b3c4d") is None
    assert segment_refusal("/dev/shm/vllm-x-tp:0-[0-1]-cpushm_0") is None
    assert segment_refusal("/etc/passwd") == "not in /dev/shm/"
    for path in ("/dev/shm/../etc/psm_x", "/dev/shm/sub/psm_x", "/dev/shm//psm_x", "/dev/shm/..", "/dev/shm/"):
        assert segment_refusal(path) == "not an entry directly in /dev/shm/", path
    assert "not one of our segments" in (segment_refusal("/dev/shm/sem.mine") or "")
    regular, directory, link = stat.S_IFREG | 0o600, stat.S_IFDIR | 0o700, stat.S_IFLNK | 0o777
    assert owner_refusal(regular, 1000, 1000) is None
    assert owner_refusal(regular, 0, 1000) == "owned by uid 0, not by this user (uid 1000)"
    assert owner_refusal(link, 1000, 1000) == "a symbolic link"
    assert owner_refusal(directory, 1000, 1000) == "not a regular file"
    assert owner_refusal(directory, 1000, 1000, directory=True) is None
    assert owner_refusal(regular, 1000, 1000, directory=True) == "not a directory"
