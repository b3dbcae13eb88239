"""What goes into a unit stays a value: no line break or NUL from any source becomes a directive, `%`
is never a specifier, `$` never a variable, and the key is in no setting that PID 1 opens.

The property test renders units for arbitrary argv items, env values and workdir paths, has
`systemd-analyze verify` load each one, and reads it back with tests/service/unit_syntax.py (a
reader of systemd's unit syntax written from its manuals): exactly the directives we wrote, and
ExecStart=/Environment= give back exactly the argv and env. What systemd itself runs from such
values is test_unit.py's real user manager (exact cmdline and environ of the unit's server).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dsv4setup.core.workdir import Workdir
from dsv4setup.service.manage import KEY_FILE, ServedCommand, install_command
from dsv4setup.service.unit import UnitSpec, UnsafeUnitValue, render_unit
from tests.faults.tally import attack
from tests.service import unit_syntax

REPO = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
INJECTED = "a\nExecStartPre=+/bin/touch /tmp/dsv4setup-unit-test-pwned"

# every character systemd does not take as a line end; surrogates are no UTF-8 (refused on their own)
value_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\0")
nasty = st.sampled_from(["%", "%n", "%%", "$", "$$", "${HOME}", "$HOME", "\\", "\\\\", '"', "'", " ", "\t", ";",
                         "é", "✓", "\x01", "\x7f", "=", "#"])
values = st.lists(nasty | st.text(value_chars, max_size=6), max_size=6).map("".join)
path_parts = st.lists(nasty | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\0/"),
                                      min_size=1, max_size=6), min_size=1, max_size=4).map("".join) \
    .filter(lambda part: part not in (".", ".."))
env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


def expected_directives(spec: UnitSpec) -> list[tuple[str, str]]:
    return [("Unit", "Description"), ("Unit", "After"), ("Unit", "Wants"), ("Unit", "StartLimitIntervalSec"),
            ("Unit", "StartLimitBurst"), ("Service", "Type"), *([("Service", "User")] if spec.user else []),
            ("Service", "WorkingDirectory"), *[("Service", "Environment")] * len(spec.env),
            ("Service", "ExecStart"), ("Service", "ExecStartPost"), ("Service", "Restart"), ("Service", "RestartSec"),
            ("Service", "TimeoutStartSec"), ("Service", "TimeoutStopSec"), ("Service", "KillMode"),
            ("Service", "StandardOutput"), ("Service", "StandardError"), ("Install", "WantedBy")]


def verify(unit_file: Path) -> None:
    """`systemd-analyze verify` loads the file as systemd would, with no running manager, and says nothing."""
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "verify", "--man=no", str(unit_file)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stderr == "", (done.stderr, unit_file.read_text())


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)")
@PROPERTY
@given(argv=st.lists(values, max_size=5), env=st.dictionaries(env_names, values, max_size=4),
       workdir=st.lists(path_parts, min_size=1, max_size=3).map("/".join),
       python_dir=path_parts, host=values, description=values, scope=st.sampled_from(["user", "system"]))
def test_any_argv_env_and_path_comes_back_exactly_from_the_unit(
        argv: list[str], env: dict[str, str], workdir: str, python_dir: str, host: str, description: str,
        scope: str) -> None:
    # refused, each by its own test below: a workdir ending in whitespace or a backslash, an interpreter path
    # holding what systemd refuses in an executable (quotes, backslashes, control characters) or `$`
    assume(workdir.rstrip(" \t\\") == workdir and not any(c in "\"'\\$\x7f" or c < " " for c in python_dir))
    with tempfile.TemporaryDirectory(prefix="dsv4setup-unit-") as tmp:
        root = Path(tmp) / workdir
        python = Path(tmp) / "py" / python_dir / "python"
        python.parent.mkdir(parents=True)
        python.symlink_to(sys.executable)  # verify wants the executable to exist
        key_file = root / "secrets" / KEY_FILE
        spec = UnitSpec(scope=scope, workdir=root, argv=["/usr/bin/env", *argv], env=env, host=host, port=8123,
                        ready_timeout_s=600, api_key_file=key_file, user="root" if scope == "system" else None,
                        description=description, python=str(python))
        unit_file = Path(tmp) / "dsv4setup-prop.service"
        unit_file.write_text(render_unit(spec), encoding="utf-8")
        verify(unit_file)
        found = unit_syntax.directives(unit_file.read_text(encoding="utf-8"))
        assert [(d.section, d.key) for d in found] == expected_directives(spec)
        got = {d.key: d.value for d in found if d.key != "Environment"}
        assert unit_syntax.exec_argv(got["ExecStart"]) == [
            str(python), "-m", "dsv4setup.service.run", "--workdir", str(root), "--host", host, "--port", "8123",
            "--env-names", ",".join(env) or "-", "--api-key-file", str(key_file), "--", "/usr/bin/env", *argv]
        assert unit_syntax.exec_argv(got["ExecStartPost"]) == [
            str(python), "-m", "dsv4setup.service.ready", "--host", host, "--port", "8123", "--timeout", "600"]
        environment: dict[str, str] = {}
        for d in found:
            if d.key == "Environment":
                environment.update(unit_syntax.environment(d.value))
        assert environment == env
        assert unit_syntax.specifiers(got["Description"]) == f"dsv4setup {description} ({root})"
        assert unit_syntax.specifiers(got["WorkingDirectory"]) == str(root.resolve())
        if scope == "system":
            assert unit_syntax.specifiers(got["User"]) == "root"


def _spec(tmp_path: Path, **changes: object) -> UnitSpec:
    fields: dict[str, object] = {"scope": "system", "workdir": tmp_path / "wd", "argv": [sys.executable, "-V"],
                                 "env": {"A": "1"}, "host": "127.0.0.1", "port": 8000, "ready_timeout_s": 60,
                                 "api_key_file": None, "user": "someone"}
    return UnitSpec(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "where"), [
    ({"env": {"FOO": INJECTED}}, "env.FOO"),
    ({"env": {"FOO": "a\rExecStartPre=+/bin/true"}}, "env.FOO"),
    ({"env": {"FOO": "a\0b"}}, "env.FOO"),
    ({"env": {"FOO\nExecStartPre": "x"}}, "env.FOO\nExecStartPre"),
    ({"argv": [sys.executable, "-V", "--x", INJECTED]}, "argv[3] of the serve command"),
    ({"host": "127.0.0.1\nExecStartPre=+/bin/true"}, "serve.host"),
    ({"workdir": Path("/tmp/wd\nExecStartPre=+/bin/true")}, "the workdir path"),
    ({"workdir": Path("/tmp/wd\\")}, "the workdir path"),
    ({"workdir": Path("/tmp/wd ")}, "the workdir path"),
    ({"description": "x\nExecStartPre=+/bin/true"}, "the unit description"),
    ({"python": "/usr/bin/python3\nExecStartPre=+/bin/true"}, "the interpreter path"),
    ({"python": "/opt/$HOME/python3"}, "the interpreter path"),
    ({"python": "/home/o'brien/venv/bin/python3"}, "the interpreter path"),
    ({"python": "/opt/back\\slash/python3"}, "the interpreter path"),
    ({"python": "python3"}, "the interpreter path"),
    ({"user": "someone\nExecStartPre=+/bin/true"}, "User="),
    ({"user": "someone\\"}, "User="),
    ({"argv": [sys.executable, "\udcff"]}, "argv[1] of the serve command"),
])
def test_a_value_that_would_not_stay_one_value_is_refused_naming_it(
        tmp_path: Path, changes: dict[str, object], where: str) -> None:
    with pytest.raises(UnsafeUnitValue) as refused:
        render_unit(_spec(tmp_path, **changes))
    assert refused.value.where == where and refused.value.exit_code == 2
    assert refused.value.message.startswith(f"{where} cannot be written into a systemd unit")


def test_percent_in_the_description_and_workdir_is_no_specifier(tmp_path: Path) -> None:
    spec = _spec(tmp_path, workdir=tmp_path / "100%n done", description="vLLM server, 50%i")
    text = render_unit(spec)
    found = {d.key: d.value for d in unit_syntax.directives(text)}
    assert found["Description"] == f"dsv4setup vLLM server, 50%%i ({tmp_path}/100%%n done)"
    assert found["WorkingDirectory"] == f"{tmp_path.resolve()}/100%%n done"


def test_no_setting_makes_systemd_open_the_key_file_the_runner_reads_it(tmp_path: Path) -> None:
    """PID 1 opens EnvironmentFile= and LoadCredential= as root, through any symlink the user put there."""
    workdir = Workdir(tmp_path / "wd").ensure()
    doc = install_command(workdir, "system", ServedCommand([sys.executable, "-V"], {"A": "1"}, "0.0.0.0", 8000, 60,
                                                           "s3cret-key-value", "test"), allow_root=True)
    text = Path(doc["unit_file"]).read_text()
    found = unit_syntax.directives(text)
    assert not [d for d in found if d.key in ("EnvironmentFile", "LoadCredential", "LoadCredentialEncrypted",
                                              "SetCredential", "ImportCredential")]
    assert "s3cret-key-value" not in text and "s3cret-key-value" not in json.dumps(doc)
    start = unit_syntax.exec_argv(next(d.value for d in found if d.key == "ExecStart"))
    key_file = Path(start[start.index("--api-key-file") + 1])
    assert key_file == workdir.secrets_dir / KEY_FILE and key_file.read_text() == "s3cret-key-value\n"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_the_runner_starts_no_server_when_it_cannot_read_the_key(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    done = subprocess.run([sys.executable, "-m", "dsv4setup.service.run", "--workdir", str(tmp_path / "wd"),
                           "--host", "0.0.0.0", "--port", "8000", "--api-key-file", str(tmp_path / "missing.key"),
                           "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1 and "cannot read the API key" in done.stderr
    assert not marker.exists()


def _cli(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    done = subprocess.run([sys.executable, "-m", "dsv4setup", *args, "--json"], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize(("override", "where"), [
    (f"env.FOO={INJECTED}", "env.FOO"),
    ('serve.extra_args=["--enable-auto-tool-choice", "--tool-call-parser", "a\\nExecStartPre=+/bin/true"]',
     "serve.extra_args[2]"),
])
@pytest.mark.security
def test_cli_refuses_a_line_break_from_the_profile_naming_its_key(tmp_path: Path, override: str, where: str) -> None:
    """The issue's repro: `--set env.FOO=<a newline>ExecStartPre=+cmd` must not become a directive of a root unit."""
    workdir = Workdir(tmp_path / "wd").ensure()
    workdir.venv_python.parent.mkdir(parents=True)
    workdir.venv_python.symlink_to(sys.executable)  # the serving interpreter only has to exist to render a unit
    code, doc = _cli("service", "install", "--system", "--profile", "cpu-tiny", "--workdir", str(workdir.root),
                     "--set", override)
    written = list(workdir.run_dir.glob("*.service"))
    attack("unit", f"a newline + `ExecStartPre=+cmd` in {where}", got=f"exit {code} ({doc.get('reference')})",
           reached=any("ExecStartPre" in f.read_text() for f in written))
    assert code == 2 and doc["reference"] == "unit-unsafe-value", doc
    assert doc["message"].startswith(f"{where} cannot be written into a systemd unit"), doc["message"]
    assert not list(workdir.run_dir.glob("*.service")) and not (workdir.run_dir / "service.json").exists()
