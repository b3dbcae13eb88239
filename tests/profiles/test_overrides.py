"""Overrides: dsv4setup.yaml and --set merge over the profile, are validated, and report their origin."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dsv4setup.core.errors import EXIT_USAGE, UsageError
from dsv4setup.core.state import State, save_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.loader import ProfileError, shipped_profile_files
from dsv4setup.profiles.overrides import parse_set, set_in_yaml_text, write_override
from dsv4setup.profiles.resolve import resolve_profile
from tests.profiles.conftest import assert_valid

MAXQ = "rtx-pro-6000-maxq-x2"


def maxq_file() -> str:
    return "profile:" + str(next(p for p in shipped_profile_files() if p.stem == MAXQ))


def write_overrides(workdir: Workdir, text: str) -> Path:
    workdir.overrides_file.write_text(text, encoding="utf-8")
    return workdir.overrides_file


def test_workdir_file_and_set_merge_with_origins(workdir: Workdir) -> None:
    path = write_overrides(workdir, "serve:\n  port: 8100\nenv:\n  NCCL_DEBUG: INFO\n")
    resolved = resolve_profile(workdir, MAXQ, ["serve.max_model_len=131072", "spec.num_speculative_tokens=2",
                                               "env.NCCL_P2P_DISABLE=0"])
    p, origins = resolved.profile, resolved.origins
    assert (p.serve.port, p.serve.max_model_len, p.spec.num_speculative_tokens) == (8100, 131072, 2)
    assert p.env["NCCL_DEBUG"] == "INFO" and p.env["NCCL_P2P_DISABLE"] == "0"
    assert p.env["NCCL_PROTO"] == "LL"  # env merges key by key
    assert origins["serve.port"] == origins["env.NCCL_DEBUG"] == f"workdir:{path}"
    assert origins["serve.max_model_len"] == origins["spec.num_speculative_tokens"] == "--set"
    assert origins["env.NCCL_P2P_DISABLE"] == "--set"
    assert origins["serve.max_num_seqs"] == origins["serve.gpu_memory_utilization"] == "preset:524k"
    assert origins["serve.tensor_parallel_size"] == origins["env.NCCL_PROTO"] == maxq_file()
    assert origins["serve.host"] == "default"
    assert resolved.overrides["serve"] == {"port": 8100, "max_model_len": 131072}


def test_later_set_wins_and_set_beats_workdir(workdir: Workdir) -> None:
    write_overrides(workdir, "spec:\n  num_speculative_tokens: 3\n")
    resolved = resolve_profile(workdir, MAXQ, ["spec.num_speculative_tokens=2", "spec.num_speculative_tokens=0"])
    assert resolved.profile.spec.num_speculative_tokens == 0
    assert resolved.origins["spec.num_speculative_tokens"] == "--set"


def test_choosing_a_preset_and_explicit_keys_beating_it(workdir: Workdir) -> None:
    write_overrides(workdir, "preset: 262k\n")
    resolved = resolve_profile(workdir, MAXQ, [])
    assert (resolved.profile.serve.max_model_len, resolved.profile.serve.max_num_seqs) == (262144, 4)
    assert resolved.preset == "262k" and resolved.origins["serve.max_model_len"] == "preset:262k"
    resolved = resolve_profile(workdir, MAXQ, ["preset=128k", "serve.max_num_seqs=6"])
    s = resolved.profile.serve
    assert (s.max_model_len, s.max_num_seqs, s.gpu_memory_utilization) == (131072, 6, 0.90)
    assert resolved.origins["serve.max_num_seqs"] == "--set"
    assert resolved.origins["serve.max_model_len"] == "preset:128k"


def test_a_preset_defined_in_the_workdir_can_be_chosen(workdir: Workdir) -> None:
    write_overrides(workdir, "presets:\n  64k: {max_model_len: 65536, max_num_seqs: 16}\npreset: 64k\n")
    resolved = resolve_profile(workdir, MAXQ, [])
    assert (resolved.profile.serve.max_model_len, resolved.profile.serve.max_num_seqs) == (65536, 16)
    assert set(resolved.profile.presets) == {"524k", "262k", "128k", "64k"}


def test_unknown_preset_lists_the_known_ones(workdir: Workdir) -> None:
    with pytest.raises(ProfileError, match=r"--set preset=1m: preset: no preset '1m' \(presets: 524k, 262k, 128k\)"):
        resolve_profile(workdir, MAXQ, ["preset=1m"])


def test_set_errors_name_the_set(workdir: Workdir) -> None:
    with pytest.raises(ProfileError) as failed:
        resolve_profile(workdir, MAXQ, ["serve.max_model_length=1", "serve.port=http"])
    lines = str(failed.value).splitlines()
    assert lines[0].startswith("--set serve.port=http: serve.port: expected an integer, got 'http'")
    assert lines[1].startswith("--set serve.max_model_length=1: serve.max_model_length: unknown key "
                               "(did you mean max_model_len?)")
    assert failed.value.exit_code == EXIT_USAGE


def test_workdir_file_errors_name_file_and_line(workdir: Workdir) -> None:
    path = write_overrides(workdir, "# mine\nserve:\n  port: 8100\n  gpu_memory_utilization: 1.5\n")
    with pytest.raises(ProfileError) as failed:
        resolve_profile(workdir, MAXQ, [])
    assert str(failed.value) == (f"{path}:4: serve.gpu_memory_utilization: expected less than or equal to 1, "
                                 f"got 1.5")


def test_identity_keys_cannot_be_overridden(workdir: Workdir) -> None:
    with pytest.raises(UsageError, match="name: cannot be overridden"):
        resolve_profile(workdir, MAXQ, ["name=other"])
    write_overrides(workdir, "name: other\n")
    with pytest.raises(ProfileError, match=r"dsv4setup.yaml:1: name: cannot be overridden"):
        resolve_profile(workdir, MAXQ, [])


def test_env_null_removes_a_variable(workdir: Workdir) -> None:
    resolved = resolve_profile(workdir, MAXQ, ["env.NCCL_P2P_DISABLE=null"])
    assert "NCCL_P2P_DISABLE" not in resolved.profile.env
    assert "env.NCCL_P2P_DISABLE" not in resolved.origins


def test_list_items_can_be_patched_by_index(workdir: Workdir) -> None:
    resolved = resolve_profile(workdir, "dgx-spark-gb10-x2", ["multinode.nodes.1.address=10.0.0.2"])
    nodes = resolved.profile.multinode.nodes
    assert [n.address for n in nodes] == [None, "10.0.0.2"] and nodes[1].name == "spark-2"
    assert resolved.origins["multinode.nodes.1.address"] == "--set"
    assert resolved.origins["multinode.nodes.1.name"].startswith("profile:")
    with pytest.raises(ProfileError, match="index 5 is out of range: the list has 2 item"):
        resolve_profile(workdir, "dgx-spark-gb10-x2", ["multinode.nodes.5.address=10.0.0.2"])


def test_set_values_are_typed_by_the_target_field() -> None:
    assert parse_set("serve.max_model_len=131072") == (("serve", "max_model_len"), 131072)
    assert parse_set("env.NCCL_P2P_DISABLE=1") == (("env", "NCCL_P2P_DISABLE"), "1")
    assert parse_set("model.revision=0123456") == (("model", "revision"), "0123456")
    assert parse_set("serve.kv_cache_dtype=null") == (("serve", "kv_cache_dtype"), None)
    assert parse_set("serve.enforce_eager=true") == (("serve", "enforce_eager"), True)
    assert parse_set("bench.k_values=[0, 1]") == (("bench", "k_values"), [0, 1])
    assert parse_set("serve.extra_args=[--a, b]") == (("serve", "extra_args"), ["--a", "b"])
    assert parse_set("multinode.nodes.0.address=10.0.0.1") == (("multinode", "nodes", 0, "address"), "10.0.0.1")
    for bad in ("serve.port", "=1", "serve..port=1"):
        with pytest.raises(UsageError):
            parse_set(bad)


def test_name_comes_from_flag_then_workdir_file_then_state(workdir: Workdir) -> None:
    save_state(workdir.state_file, State(profile="h200-tp2"))
    assert resolve_profile(workdir, None, []).profile.name == "h200-tp2"
    assert resolve_profile(workdir, None, []).selected_by == f"state:{workdir.state_file}"
    write_overrides(workdir, "profile: gh200-x2\n")
    assert resolve_profile(workdir, None, []).profile.name == "gh200-x2"
    assert resolve_profile(workdir, "cpu-tiny", []).profile.name == "cpu-tiny"


def test_unknown_profile_lists_the_available_names(workdir: Workdir) -> None:
    with pytest.raises(UsageError) as failed:
        resolve_profile(workdir, "rtx-pro-6000-maxq", [])
    assert "did you mean rtx-pro-6000-maxq-x2?" in failed.value.message
    assert "cpu-tiny" in failed.value.message and "h200-tp2" in failed.value.message


def test_a_profile_file_path_can_be_given(workdir: Workdir, tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\ndescription: d\nsource: s\nmodel: {repo: a/b}\n", encoding="utf-8")
    resolved = resolve_profile(workdir, str(mine), ["serve.port=9000"])
    assert resolved.profile.name == "mine" and resolved.origins["model.repo"] == f"profile:{mine}"


def test_without_name_state_or_probe_the_user_is_told_what_to_do(workdir: Workdir) -> None:
    """The profiles never look at the machine themselves: a caller that passes no probe gets told to name one."""
    with pytest.raises(UsageError) as failed:
        resolve_profile(workdir, None, [])
    assert failed.value.message.startswith("no profile chosen")
    assert "dsv4setup doctor" in (failed.value.fix or "") and "--profile NAME" in (failed.value.fix or "")


def test_write_override_keeps_comments_and_other_keys(workdir: Workdir) -> None:
    path = write_overrides(workdir, "# tuned by hand\nprofile: rtx-pro-6000-maxq-x2  # the box under the desk\n"
                           "serve:\n  port: 8100  # 8000 is taken\n\nspec:\n  num_speculative_tokens: 1\n")
    write_override(workdir, "spec.num_speculative_tokens", 3, {"shape": "long", "tok_s": {"0": 105.9, "3": 193.0}})
    write_override(workdir, "serve.max_num_seqs", 4, None)
    text = path.read_text()
    for kept in ("# tuned by hand", "# the box under the desk", "port: 8100  # 8000 is taken"):
        assert kept in text
    doc = yaml.safe_load(text)
    assert doc["spec"] == {"num_speculative_tokens": 3}
    assert doc["serve"] == {"port": 8100, "max_num_seqs": 4}
    evidence = doc["evidence"]["spec.num_speculative_tokens"]
    assert evidence["tok_s"] == {"0": 105.9, "3": 193.0} and "written_at" in evidence
    resolved = resolve_profile(workdir, None, [])
    assert resolved.profile.spec.num_speculative_tokens == 3
    assert resolved.origins["spec.num_speculative_tokens"] == f"workdir:{path}"


def test_write_override_creates_the_file_and_checks_key_and_value(workdir: Workdir) -> None:
    path = write_override(workdir, "env.NCCL_P2P_DISABLE", "1")
    assert yaml.safe_load(path.read_text()) == {"env": {"NCCL_P2P_DISABLE": "1"}}
    assert path.read_text().startswith("# dsv4setup overrides")
    with pytest.raises(UsageError, match="no such profile key"):
        write_override(workdir, "spec.num_tokens", 2)
    with pytest.raises(UsageError, match="expected an integer"):
        write_override(workdir, "spec.num_speculative_tokens", "lots")
    with pytest.raises(UsageError, match="no such profile key"):
        write_override(workdir, "name", "other")


def test_write_override_refuses_a_broken_file(workdir: Workdir) -> None:
    path = write_overrides(workdir, "serve: [unclosed\n")
    with pytest.raises(ProfileError, match="yaml syntax"):
        write_override(workdir, "spec.num_speculative_tokens", 2)
    assert path.read_text() == "serve: [unclosed\n"


@pytest.mark.parametrize(("text", "path", "value", "expected"), [
    ("", ["spec", "num_speculative_tokens"], 2, {"spec": {"num_speculative_tokens": 2}}),
    ("serve: {port: 1}\n", ["serve", "max_num_seqs"], 2, {"serve": {"port": 1, "max_num_seqs": 2}}),
    ("serve:\n", ["serve", "max_num_seqs"], 2, {"serve": {"max_num_seqs": 2}}),
    ("env:\n  A: '1'\n", ["env", "A"], "2", {"env": {"A": "2"}}),
    ("a:\n  b:\n    c: 1\nd: 2\n", ["a", "b"], 5, {"a": {"b": 5}, "d": 2}),
    ("a: 1\n", ["a"], {"x": [1, 2]}, {"a": {"x": [1, 2]}}),
])
def test_set_in_yaml_text_always_yields_the_intended_document(text: str, path: list[str], value: object,
                                                               expected: dict) -> None:
    assert yaml.safe_load(set_in_yaml_text(text, path, value)) == expected


def test_show_cli_reports_origins_as_json(workdir: Workdir, cli) -> None:
    path = write_overrides(workdir, "serve:\n  port: 8100\n")
    result = cli("profile", "show", MAXQ, "--workdir", str(workdir.root), "--set", "preset=128k", "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert_valid(doc, "profile-show")
    assert doc["origins"]["serve.port"] == f"workdir:{path}"
    assert doc["origins"]["preset"] == "--set"
    assert doc["origins"]["serve.max_model_len"] == "preset:128k"
    assert "--max-model-len" in doc["serve"]["argv"] and doc["profile"]["serve"]["max_model_len"] == 131072
    human = cli("profile", "show", MAXQ, "--workdir", str(workdir.root), "--set", "preset=128k")
    assert human.code == 0 and "preset:128k" in human.stdout and "serve.port" in human.stdout


def test_a_stale_name_in_state_says_where_it_came_from(workdir: Workdir) -> None:
    save_state(workdir.state_file, State(profile="retired-profile"))
    with pytest.raises(UsageError) as failed:
        resolve_profile(workdir, None, [])
    assert f"(the name comes from state:{workdir.state_file})" in failed.value.message
    assert "--profile NAME" in (failed.value.fix or "")


def test_auto_pick_never_picks_the_cpu_demo_with_the_real_probe(workdir: Workdir) -> None:
    """Without a GPU or driver `up` refuses to choose: the CPU demo takes an explicit --profile cpu-tiny."""
    from dsv4setup.preflight.snapshot import take_snapshot
    from dsv4setup.profiles.resolve import NoProfileError

    if take_snapshot(workdir)["gpus"]:
        pytest.skip("this machine has NVIDIA GPUs: the pick depends on which")
    with pytest.raises(NoProfileError) as refused:
        resolve_profile(workdir, None, [], probe=take_snapshot)
    assert refused.value.exit_code == 1 and "none is usable here: no NVIDIA GPU visible" in refused.value.message
    assert "lspci | grep -i nvidia" in (refused.value.fix or "") and "R580" in (refused.value.fix or "")
    assert "--profile cpu-tiny" in (refused.value.fix or "")
    assert resolve_profile(workdir, "cpu-tiny", []).profile.demo
