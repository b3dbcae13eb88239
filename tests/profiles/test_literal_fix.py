"""Config errors name where the value came from, the key and the value as written; a managed flag in
serve.extra_args gets the literal `profile unset` / `profile set` commands, which, run as given through the
CLI, leave a workdir that resolves with the user's value under the key meant (issue 26)."""

from __future__ import annotations

import pytest

from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.fixes import split_extra_args
from tests.cli_docs import run_cli


@pytest.mark.parametrize(("args", "kept", "settings"), [
    (["--hos", "0.0.0.0"], [], ["serve.host=0.0.0.0"]),
    (["--host=10.0.0.5", "--reasoning-parser", "deepseek_v3"], ["--reasoning-parser", "deepseek_v3"],
     ["serve.host=10.0.0.5"]),
    (["--port", "8001", "-tp", "2"], [], ["serve.port=8001", "serve.tensor_parallel_size=2"]),
    (["--max_model_len", "4096"], [], ["serve.max_model_len=4096"]),
    (["--enforce-eager"], [], ["serve.enforce_eager=true"]),
    (["--no-enforce-eager"], [], ["serve.enforce_eager=false"]),
    (["--speculative-config", '{"method": "mtp", "num_speculative_tokens": 2}'], [],
     ["spec.num_speculative_tokens=2"]),
    (["--model", "/data/x", "--seed", "1"], ["--seed", "1"], []),  # reserved: dropped, its value not carried
])
def test_each_spelling_of_a_managed_flag_maps_to_its_key_with_the_value(args: list[str], kept: list[str],
                                                                        settings: list[str]) -> None:
    assert split_extra_args(args) == (kept, settings)


@pytest.mark.parametrize("args", [["--config", "/etc/x.yaml"], ["--max-num", "3"], ["--port"], ["0.0.0.0"]])
def test_no_literal_fix_where_the_key_meant_is_not_known(args: list[str]) -> None:
    assert split_extra_args(args) is None


def test_a_reserved_flag_in_the_workdir_file_gets_unset_then_set_with_the_value_carried_over(
        capsys: pytest.CaptureFixture[str], workdir: Workdir) -> None:
    workdir.ensure()
    workdir.overrides_file.write_text('profile: cpu-tiny\nserve:\n  extra_args: ["--hos", "0.0.0.0"]\n')
    root = str(workdir.root)
    code, error = run_cli(capsys, "profile", "show", "--workdir", root, "--json")
    assert code == 2 and error["schema"] == "dsv4setup.error/2"
    assert f"{workdir.overrides_file}:3: serve.extra_args:" in error["message"]
    assert '(the value: ["--hos", "0.0.0.0"])' in error["message"]
    assert error["command"] == f"dsv4setup profile unset serve.extra_args --workdir {root}"

    code, nxt = run_cli(capsys, "next", "--workdir", root, "--json")
    assert code == 0 and nxt["action"] == "fix"
    assert nxt["command"] == ["dsv4setup", "profile", "unset", "serve.extra_args", "--workdir", root]
    assert nxt["then"] == [["dsv4setup", "profile", "set", "serve.host=0.0.0.0", "--workdir", root],
                           ["dsv4setup", "next", "--workdir", root, "--json"]]
    for command in [nxt["command"], *nxt["then"][:-1]]:  # as given, in order
        assert run_cli(capsys, *command[1:], "--json")[0] == 0, command
    code, shown = run_cli(capsys, "profile", "show", "--workdir", root, "--json")
    serve = shown["profile"]["serve"]
    assert code == 0 and serve["host"] == "0.0.0.0" and "--hos" not in serve["extra_args"]
    assert shown["origins"]["serve.extra_args"].startswith("profile:")  # the profile's own list again
    assert run_cli(capsys, "next", "--workdir", root, "--json")[1]["action"] == "run"


def test_a_command_line_set_names_its_argument_and_what_to_pass_instead(capsys: pytest.CaptureFixture[str],
                                                                        workdir: Workdir) -> None:
    workdir.ensure()
    bad = 'serve.extra_args=["--port=8001", "--seed", "1"]'
    code, error = run_cli(capsys, "profile", "show", "cpu-tiny", "--workdir", str(workdir.root), "--set", bad,
                          "--json")
    assert code == 2 and error["message"].startswith(f"--set {bad}: serve.extra_args:")
    assert error["fix"] == f'replace `--set {bad}` with `--set serve.port=8001 --set serve.extra_args=["--seed", "1"]`'
    assert error["command"] is None


def test_a_scalar_error_names_file_line_key_and_value(capsys: pytest.CaptureFixture[str], workdir: Workdir) -> None:
    workdir.ensure()
    workdir.overrides_file.write_text("profile: cpu-tiny\nserve:\n  port: abc\n")
    code, error = run_cli(capsys, "profile", "show", "--workdir", str(workdir.root), "--json")
    assert code == 2 and error["message"] == f"{workdir.overrides_file}:3: serve.port: expected an integer, got 'abc'"
