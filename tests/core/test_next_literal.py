"""`next` is literal: the command it returns, run as is, makes progress.

For every known failure and check id, the command `next` would return after that failure
parses with the real CLI (in-process click parsing, nothing executed); a failure whose fix is
an override goes `profile set KEY=VALUE` (fix) -> `up` (run), with `profile unset` as the inverse.
"""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path
from typing import Any

import pytest
import typer

from dsv4setup.checkpoint.outputs import CheckpointOutputs
from dsv4setup.cli import app, main, register
from dsv4setup.core.errors import StepError
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.core.state import State, StepErrorInfo, StepStatus, save_state
from dsv4setup.core.workdir import Workdir
from dsv4setup.next_action import next_action
from dsv4setup.preflight.outputs import PreflightOutputs
from dsv4setup.profiles import keys
from dsv4setup.profiles.overrides import parse_set
from dsv4setup.serve.process import check_port_free
from dsv4setup.serve.signatures import known_failures
from tests.core.test_agents_doc import check_ids


def parse_with_real_cli(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse argv as `dsv4setup` would (click), down to the leaf command; raise on any parse error."""
    assert argv[0] == "dsv4setup"
    register()
    cmd: Any = typer.main.get_command(app)
    ctx = cmd.make_context("dsv4setup", list(argv[1:]))
    while hasattr(cmd, "resolve_command"):
        name, cmd, rest = cmd.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = cmd.make_context(name, rest, parent=ctx)
    return cmd.name, ctx.params


# what the serve command reads of the steps before it (typed outputs: a record must hold them)
READ_BY_SERVE = {
    "preflight": PreflightOutputs(snapshot="/w/hardware.json", report="/w/doctor.json", recommendation=None,
                                  findings={}, warnings=[]),
    "checkpoint": CheckpointOutputs(path="/w/models/m", vllm_version="0.32.0", ok=True, counts={}, warnings=[],
                                    mtp=None, hf_config_path=None, stats={}),
}


def failed_state(step: str, error: StepErrorInfo) -> State:
    state = State(profile="cpu-tiny")
    for name in ("preflight", "toolkit", "vllm", "patches", "download", "checkpoint"):
        state.step(name).status = StepStatus.DONE
        if name in READ_BY_SERVE:
            state.step(name).outputs = READ_BY_SERVE[name].model_dump(mode="json")
    state.step(step).status, state.step(step).error = StepStatus.FAILED, error
    return state


def command_after(workdir: Workdir, step: str, error: StepErrorInfo) -> list[str]:
    save_state(workdir.state_file, failed_state(step, error))
    action = next_action(workdir)
    assert action.action in ("fix", "run")
    return action.command


def with_workdir(command: list[str] | None, workdir: Workdir) -> list[str] | None:
    return [*command, "--workdir", str(workdir.root)] if command else None


@pytest.mark.parametrize("failure", known_failures(), ids=lambda f: f.id)
def test_every_known_failure_next_command_parses(workdir: Workdir, failure: Any) -> None:
    command = command_after(workdir, "serve", StepErrorInfo(
        message=failure.finding.summary, fix=failure.finding.fix, known_failure=failure.id,
        command=with_workdir(shlex.split(failure.finding.command) if failure.finding.command else None, workdir)))
    name, params = parse_with_real_cli(command)
    assert str(params["workdir"]) == str(workdir.root)
    if failure.sets:
        assert name == "set" and params["items"] == list(failure.sets)
        for item in failure.sets:
            loc, _ = parse_set(item)
            assert keys.at(tuple(str(p) for p in loc)) is not None, item  # a real profile key
    else:
        assert name == "up"


@pytest.mark.parametrize("check_id", sorted(check_ids()))
def test_every_check_failure_next_command_parses(workdir: Workdir, check_id: str) -> None:
    step = "checkpoint" if check_id.startswith("checkpoint.") else "preflight"
    command = command_after(workdir, step, StepErrorInfo(message=f"{step}: {check_id} failed", fix="its fix"))
    assert parse_with_real_cli(command)[0] == "up"


def test_a_port_in_use_names_a_checked_free_port_and_next_goes_profile_set_then_up(
        workdir: Workdir, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StepError) as info:
            check_port_free("127.0.0.1", port)
        error = info.value
        assert error.known_failure == "port-in-use" and error.command is not None
        argv = shlex.split(error.command)  # the error document's command, as a user types it
        spare = int(argv[-1].split("=")[1])
        assert spare != port and f"port {spare}" in (error.fix or "")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", spare))  # it really was free

    fix = command_after(workdir, "serve", StepErrorInfo(message=error.message, fix=error.fix,
                                                         known_failure="port-in-use",
                                                         command=with_workdir(argv, workdir)))
    assert fix[:3] == ["dsv4setup", "profile", "set"]
    with pytest.raises(SystemExit) as done:
        main([*fix[1:], "--json"])
    assert done.value.code == 0, capsys.readouterr()
    capsys.readouterr()
    after = next_action(workdir)
    assert after.action == "run" and after.command[:2] == ["dsv4setup", "up"]

    with pytest.raises(SystemExit) as shown:
        main(["profile", "show", "--workdir", str(workdir.root), "--json"])
    doc = json.loads(capsys.readouterr().out)
    validate_document(doc)
    assert shown.value.code == 0, doc
    assert doc["workdir_overrides"]["keys"] == ["serve.port"]
    assert doc["profile"]["serve"]["port"] == spare

    with pytest.raises(SystemExit) as unset:
        main(["profile", "unset", "serve.port", "--workdir", str(workdir.root), "--json"])
    assert unset.value.code == 0, capsys.readouterr()
    capsys.readouterr()
    assert "port" not in (Path(workdir.overrides_file).read_text())
    assert next_action(workdir).action == "fix"  # the failure stands, its fix is no longer applied


def test_unset_of_a_key_that_is_not_kept_names_the_kept_ones(workdir: Workdir,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["profile", "set", "serve.max_num_seqs=2", "--workdir", str(workdir.root), "--profile", "cpu-tiny"])
    with pytest.raises(SystemExit) as info:
        main(["profile", "unset", "serve.port", "--workdir", str(workdir.root), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert info.value.code == 2 and "does not set it" in doc["message"] and "serve.max_num_seqs" in doc["fix"]

