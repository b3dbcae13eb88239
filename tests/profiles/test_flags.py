"""serve.extra_args is resolved like vLLM's parser resolves it: abbreviations, `=value`, underscores,
dotted fields, aliases and `--config` files cannot reach a flag dsv4setup manages or reserves."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4setup.profiles import flags

BYPASSES = [
    ["--hos", "0.0.0.0"], ["--hos=0.0.0.0"], ["--ho", "0.0.0.0"], ["--api-k", "k"], ["--api_k=k"],
    ["--po", "9000"], ["--port=9000"], ["--mod", "/elsewhere"], ["-t", "8"], ["-tp=8"], ["-sc", "{}"],
    ["--device-memory-utilization", "0.5"], ["--speculative_config.num_speculative_tokens", "5"],
    ["--no-trust-remote-code"], ["--no-enf"], ["--", "--host", "0.0.0.0"], ["--served_model_n", "x"],
]


@pytest.mark.parametrize("args", BYPASSES, ids=" ".join)
def test_every_spelling_of_a_guarded_flag_is_rejected(args: list[str]) -> None:
    assert flags.conflicts(args)


def test_the_message_names_the_key_to_set_instead() -> None:
    [why] = flags.conflicts(["--hos=0.0.0.0"])
    assert why == ("--hos is an abbreviation vLLM expands to --host; --host is rendered from serve.host: "
                   "set serve.host instead of repeating the flag")
    assert "VLLM_API_KEY in the environment" in flags.conflicts(["--api-ke", "x"])[0]


def test_ordinary_flags_and_values_pass() -> None:
    args = ["--tool-call-parser", "deepseek_v4", "--enable-auto-tool-choice", "--reasoning_parser=deepseek_v4",
            "--tokenizer-mode", "deepseek_v4", "--compilation-config.cudagraph_mode=FULL", "-O3", "--hf-overrides",
            "{}", "--config-format", "hf"]
    assert flags.conflicts(args) == []


def test_a_config_file_is_read_and_its_keys_checked(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text("hos: 0.0.0.0\napi_key: abc\ntrust-remote-code: false\nenable-auto-tool-choice: true\n")
    problems = flags.conflicts(["--config", str(hostile)])
    assert [p.split(": ")[0] for p in problems] == [f"--config {hostile} sets 'hos'", f"--config {hostile} sets "
                                                    "'api_key'", f"--config {hostile} sets 'trust-remote-code'"]
    benign = tmp_path / "benign.yaml"
    benign.write_text("enable-auto-tool-choice: true\ntool-call-parser: deepseek_v4\n")
    assert flags.conflicts([f"--config={benign}"]) == []
    assert flags.conflicts(["--conf", str(benign)]) == []


@pytest.mark.parametrize(("args", "expected"), [
    (["--config", "rel.yaml"], "give an absolute path"),
    (["--config", "/nonexistent/x.yaml"], "cannot be read as YAML"),
    (["--config"], "--config needs a file"),
])
def test_an_unreadable_config_file_is_rejected(args: list[str], expected: str) -> None:
    [why] = flags.conflicts(args)
    assert expected in why


def test_a_config_file_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- --host\n- 0.0.0.0\n")
    [why] = flags.conflicts(["--config", str(path)])
    assert why == f"--config {path} is not a YAML mapping of flag names to values"
