"""Two processes racing for one workdir: while `up` runs, a second `up`, a `down` and a `profile set`
each lose at once with exit 3 naming the holder's pid, and nothing the winner owns is torn.
Real `dsv4setup` subprocesses; the steps are the marker steps of tests/core/steps_for_tests."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.core.test_cli_kill_resume import dsv, env, start_slow_up  # noqa: F401 (env is a fixture)
from tests.faults.tally import record

LOSERS = {
    "up": ("up", "--profile", "cpu-tiny", "--yes"),
    "down": ("down",),
    "profile set": ("profile", "set", "serve.port=8001"),
}


@pytest.mark.parametrize("loser", list(LOSERS))
def test_the_second_process_exits_3_naming_the_holder(env: dict[str, str], loser: str) -> None:  # noqa: F811
    wd = Path(env["DSV4SETUP_WORKDIR"])
    proc = start_slow_up(env, "beta")
    try:
        state_before = (wd / "state.json").read_text()
        lost = dsv(env, *LOSERS[loser])
        untouched = not (wd / "dsv4setup.yaml").exists() and (wd / "state.json").read_text() == state_before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    won = dsv(env, *LOSERS[loser])  # once the holder is gone, the loser's command goes through
    one_winner = lost.returncode == 3 and f"pid {proc.pid}" in lost.stderr
    record("race", f"{loser} against up", survived=one_winner and won.returncode == 0, data_lost=not untouched)
    assert one_winner, lost.stderr
    assert "Traceback" not in lost.stderr and untouched
    json.loads((wd / "state.json").read_text())  # the winner's state is whole
    assert won.returncode == 0, won.stderr
