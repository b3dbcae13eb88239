"""Bad input never gives a traceback: hypothesis feeds `--set` values, dsv4setup.yaml files, profiles
and hardware snapshots (each a valid document with one value replaced, or a key dropped) to the real
CLI in-process. Every outcome is exit 0 or 2 with a message (doctor: 1 when a check fails on a valid
snapshot), never an internal error."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsv4setup.cli import main
from dsv4setup.profiles.loader import shipped_profile_files
from tests.faults.tally import record

PREFLIGHT_FIXTURES = Path(__file__).resolve().parents[1] / "preflight" / "fixtures"
FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=30)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=3), max_leaves=6)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out + captured.err


def assert_handled(code: int, output: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    handled = code in allowed and "internal error" not in output and "Traceback" not in output
    record("bad input", f"exit {code}", survived=handled)
    assert handled, (code, output[-2000:])
    if code == 2:
        assert "error" in output.lower() or '"message"' in output  # a message, not silence


def paths_of(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += paths_of(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += paths_of(value, (*prefix, index))
    return found


def mutate(doc: Any, seed: int, value: Any, drop: bool) -> Any:
    """A copy of doc with the value at one (seeded) path replaced by `value`, or its key dropped."""
    doc = json.loads(json.dumps(doc))
    paths = paths_of(doc)
    if not paths:
        return value
    *parents, last = random.Random(seed).choice(paths)
    node = doc
    for part in parents:
        node = node[part]
    if drop:
        del node[last]
    else:
        node[last] = value
    return doc


KEYS = ["serve.port", "serve.host", "serve.max_model_len", "serve.extra_args", "spec.num_speculative_tokens",
        "env.NCCL_P2P_DISABLE", "model.repo", "preset", "bench.k_values", "serve.gpu_memory_utilization", "nosuch.key"]


@FUZZ
@given(key=st.sampled_from(KEYS) | st.text(max_size=20), value=st.text(max_size=40))
def test_set_values(capsys: pytest.CaptureFixture[str], tmp_path: Path, key: str, value: str) -> None:
    assert_handled(*run(capsys, "plan", "--profile", "cpu-tiny", "--workdir", str(tmp_path / "wd"), "--json",
                        "--set", f"{key}={value}"))


@FUZZ
@given(seed=st.integers(0, 10**6), value=values, drop=st.booleans(), raw=st.none() | st.text(max_size=60))
def test_workdir_overrides_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, seed: int, value: Any,
                                drop: bool, raw: str | None) -> None:
    wd = tmp_path / "wd"
    wd.mkdir(exist_ok=True)
    base = {"profile": "cpu-tiny", "serve": {"port": 8123, "extra_args": ["--enable-auto-tool-choice"]},
            "spec": {"num_speculative_tokens": 1}, "env": {"A": "1"}}
    text = raw if raw is not None else yaml.safe_dump(mutate(base, seed, value, drop))
    (wd / "dsv4setup.yaml").write_text(text)
    # exit 1: the file lost its profile and no profile is usable on this GPU-less machine (the doctor's verdict)
    assert_handled(*run(capsys, "plan", "--workdir", str(wd), "--json"), allowed=(0, 1, 2))


@FUZZ
@given(seed=st.integers(0, 10**6), value=values, drop=st.booleans())
def test_profile_files(capsys: pytest.CaptureFixture[str], tmp_path: Path, seed: int, value: Any, drop: bool) -> None:
    source = random.Random(seed).choice(shipped_profile_files())
    doc = mutate(yaml.safe_load(source.read_text()), seed, value, drop)
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(doc))
    assert_handled(*run(capsys, "profile", "validate", str(path), "--json"))


@FUZZ
@given(seed=st.integers(0, 10**6), value=values, drop=st.booleans())
def test_hardware_snapshots(capsys: pytest.CaptureFixture[str], tmp_path: Path, seed: int, value: Any,
                            drop: bool) -> None:
    source = random.Random(seed).choice(sorted(PREFLIGHT_FIXTURES.glob("*.json")))
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(mutate(json.loads(source.read_text()), seed, value, drop)))
    assert_handled(*run(capsys, "doctor", "--snapshot", str(path), "--json"), allowed=(0, 1, 2))
