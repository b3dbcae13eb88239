"""The plan document: steps, serve argv/env, per-node commands, origins; valid against its schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsv4setup.checkpoint.outputs import CheckpointOutputs
from dsv4setup.core.state import save_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import Runbook, Selection
from dsv4setup.profiles.resolve import resolve_profile
from dsv4setup.serve.command import render_plan
from tests.core import steps_for_tests
from tests.profiles.conftest import assert_valid, done_state


@pytest.fixture
def marker_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine tests' small real steps stand in for the runbook (DSV4SETUP_RUNBOOK extension point)."""
    monkeypatch.setenv("TEST_STEPS_DIR", str(tmp_path / "markers"))
    (tmp_path / "markers").mkdir()
    monkeypatch.setenv("DSV4SETUP_RUNBOOK", "tests.core.steps_for_tests:steps")


def test_plan_document_takes_outputs_from_state(workdir: Workdir, marker_steps: None) -> None:
    linted = CheckpointOutputs(path="/m", vllm_version="0.32.0", ok=True, counts={"pass": 9}, warnings=[], mtp=None,
                               hf_config_path="/cfg", stats={})
    state = done_state(linted).model_copy(update={"profile": "cpu-tiny"})
    save_state(workdir.state_file, state)
    resolved = resolve_profile(workdir, None, ["spec.num_speculative_tokens=2"])
    runbook = Runbook(steps_for_tests.steps(), workdir, resolved.profile)
    doc = render_plan(resolved, workdir, state, runbook.plan(Selection()))
    assert_valid(doc, "plan")
    assert doc["profile"] == "cpu-tiny" and doc["selected_by"] == f"state:{workdir.state_file}"
    assert [s["step"] for s in doc["steps"]] == list(steps_for_tests.NAMES)
    argv = doc["serve"]["argv"]
    assert argv[argv.index("--hf-config-path") + 1] == "/cfg"
    assert json.loads(argv[argv.index("--speculative-config") + 1])["num_speculative_tokens"] == 2
    assert doc["overridden"] == {"spec.num_speculative_tokens": "--set"}
    assert doc["nodes"] == []


def test_plan_cli_json_shows_argv_env_and_origins(workdir: Workdir, marker_steps: None, cli) -> None:
    workdir.overrides_file.write_text("profile: rtx-pro-6000-maxq-x2\npreset: 128k\n", encoding="utf-8")
    result = cli("plan", "--workdir", str(workdir.root), "--set", "serve.port=8123", "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert_valid(doc, "plan")
    argv = doc["serve"]["argv"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert "--disable-custom-all-reduce" in argv
    assert argv[argv.index("--max-model-len") + 1] == "131072"
    assert doc["serve"]["env"]["NCCL_P2P_DISABLE"] == "1"
    assert doc["origins"]["serve.port"] == "--set"
    assert doc["origins"]["preset"] == f"workdir:{workdir.overrides_file}"
    assert doc["origins"]["serve.max_model_len"] == "preset:128k"


def test_plan_cli_for_two_sparks_lists_node_commands(workdir: Workdir, marker_steps: None, cli) -> None:
    result = cli("plan", "--workdir", str(workdir.root), "--profile", "dgx-spark-gb10-x2", "--json",
                 "--set", "multinode.nodes.0.address=10.0.0.1", "--set", "multinode.nodes.1.address=10.0.0.2")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert_valid(doc, "plan")
    head, worker = doc["nodes"]
    assert head["commands"][0]["argv"][1:4] == ["start", "--head", "--port"]
    assert worker["commands"][0]["argv"][1:4] == ["start", "--address", "10.0.0.1:6379"]
    assert head["commands"][-1]["argv"] == doc["serve"]["argv"]
    assert "--distributed-executor-backend" in doc["serve"]["argv"]


def test_plan_cli_bad_set_exits_2(workdir: Workdir, marker_steps: None, cli) -> None:
    result = cli("plan", "--workdir", str(workdir.root), "--profile", "cpu-tiny", "--set", "serve.port=x")
    assert result.code == 2
    assert "--set serve.port=x: serve.port: expected an integer, got 'x'" in result.stderr


def test_plan_cli_with_the_real_runbook_on_an_empty_workdir(workdir: Workdir, cli) -> None:
    from dsv4setup.runbook import STEP_ORDER

    result = cli("plan", "--workdir", str(workdir.root), "--profile", "cpu-tiny", "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert_valid(doc, "plan")
    assert [s["step"] for s in doc["steps"]] == list(STEP_ORDER)
    assert all(s["action"] == "run" for s in doc["steps"])
    assert doc["serve"]["argv"][:3] == [str(workdir.venv_python), "-m", "vllm.entrypoints.openai.api_server"]
