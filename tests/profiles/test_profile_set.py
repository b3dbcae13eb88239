"""`dsv4setup profile set` keeps overrides in the workdir's dsv4setup.yaml, checked before writing."""

from __future__ import annotations

import json

import pytest
import yaml

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


def test_profile_set_on_a_list_item_patches_that_node_only(capsys: pytest.CaptureFixture[str],
                                                           workdir: Workdir) -> None:
    """The doctor's cluster fixes name list items (multinode.nodes.1.interface): `profile set` keeps them."""
    before = resolve_profile(workdir, "cpu-tiny-x2", []).profile.multinode
    assert before is not None
    code, _, err = run(capsys, "profile", "set", "--workdir", str(workdir.root), "--profile", "cpu-tiny-x2",
                       "multinode.nodes.1.interface=enp1s0f1np1")
    assert code == 0, err
    after = resolve_profile(workdir, "cpu-tiny-x2", []).profile.multinode
    assert after is not None and after.nodes[1].interface == "enp1s0f1np1"
    assert after.nodes[0] == before.nodes[0] and len(after.nodes) == len(before.nodes)
    assert run(capsys, "profile", "unset", "--workdir", str(workdir.root), "--profile", "cpu-tiny-x2",
               "multinode.nodes.1.interface")[0] == 0
    assert resolve_profile(workdir, "cpu-tiny-x2", []).profile.multinode == before


def test_profile_set_indexes_a_list_the_overrides_file_holds_keeping_its_other_items(
        capsys: pytest.CaptureFixture[str], workdir: Workdir) -> None:
    nodes = [n.model_dump(mode="json") for n in resolve_profile(workdir, "cpu-tiny-x2", []).profile.multinode.nodes]
    workdir.overrides_file.write_text(yaml.safe_dump({"multinode": {"nodes": nodes}}))
    code, _, err = run(capsys, "profile", "set", "--workdir", str(workdir.root), "--profile", "cpu-tiny-x2",
                       "multinode.nodes.1.interface=eth9")
    assert code == 0, err
    written = yaml.safe_load(workdir.overrides_file.read_text())["multinode"]["nodes"]
    assert written[0] == nodes[0] and written[1] == {**nodes[1], "interface": "eth9"}
    code, _, err = run(capsys, "profile", "set", "--workdir", str(workdir.root), "--profile", "cpu-tiny-x2",
                       "multinode.nodes.5.interface=eth9")
    assert code == 2 and "multinode.nodes" in err and "Traceback" not in err
