"""The HF token and API keys never reach state, logs or JSON output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dsv4setup.cli.output import emit_json
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.core.outputs import StepOutputs
from dsv4setup.core.secrets import hf_token, redact, register_secret
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, RunContext, Selection, Step
from dsv4setup.profiles.model import Profile

TOKEN = "hf_SeCrEtToKeN1234567890"


class LeakyOutputs(StepOutputs):
    step = "leaky"

    header: str


class LeakyStep(Step):
    """A step that tries hard to leak the token: into its log, its outputs and its error."""

    name = "leaky"
    description = "writes the token everywhere it can"
    Outputs = LeakyOutputs

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"token": hf_token()}

    def is_done(self, ctx: RunContext) -> Finding:
        return postcondition(True, f"token {hf_token()}")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        ctx.require_log().line(f"Authorization: Bearer {hf_token()}")
        ctx.progress(f"using {hf_token()}")
        return {"header": f"Bearer {hf_token()}"}


def test_token_never_reaches_state_logs_or_json(workdir: Workdir, profile: Profile,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert Runbook([LeakyStep()], workdir, profile).up(Selection()).ok
    files = [workdir.state_file, *Path(workdir.logs_dir).iterdir()]
    for path in files:
        text = path.read_text()
        assert TOKEN not in text, path
    assert "Bearer ***" in workdir.log_file("leaky").read_text()
    emit_json({"schema": "x/1", "token": TOKEN, "nested": [{"t": f"a{TOKEN}b"}]})
    assert TOKEN not in capsys.readouterr().out


def test_runtime_secret_is_redacted() -> None:
    register_secret("generated-api-key-0001")
    assert redact("key=generated-api-key-0001;") == "key=***;"


@pytest.mark.parametrize(("secret", "text", "expected"), [
    ("abc", "--api-key abc done", "--api-key *** done"),
    ("abc", "Bearer abc\n", "Bearer ***\n"),
    ("abc", "key=abc;", "key=***;"),
    ("abc", "abcde xabc ab-abc abc_1", "abcde xabc ab-abc abc_1"),  # inside words: left alone
    ("k", "k", "***"),
    ("k", "kv-cache ok key", "kv-cache ok key"),
])
def test_short_secrets_are_masked_where_they_stand_alone(monkeypatch: pytest.MonkeyPatch, secret: str, text: str,
                                                         expected: str) -> None:
    monkeypatch.setenv("DSV4SETUP_API_KEY", secret)
    assert redact(text) == expected


def test_json_stays_valid_when_a_short_secret_equals_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from dsv4setup.core.fsutil import atomic_write_json

    monkeypatch.setenv("DSV4SETUP_API_KEY", "1")
    atomic_write_json(tmp_path / "doc.json", {"port": 1, "key": "1", "1": "x", "cmd": "--api-key 1"})
    assert json.loads((tmp_path / "doc.json").read_text()) == {"port": 1, "key": "***", "***": "x",
                                                               "cmd": "--api-key ***"}
