"""The systemd unit text of a workdir's server, and the checks that keep every value a value.

ExecStart is the runner (`python -m dsv4setup.service.run`) followed by exactly the plan's argv;
the plan's environment is in Environment= lines. The API key (when the server needs one) is in
no unit setting: the runner, already running as the unit's user, reads it from the 0600 file
named by `--api-key-file` and hands it to vLLM as VLLM_API_KEY. Nothing in the unit makes PID 1
(root for a system unit) open a file under the workdir: no EnvironmentFile=, no LoadCredential=.
The runner starts vLLM through the log pump (the journal and logs/serve.log get every line) and
writes the usual server record, so `status`, `top` and `down` find the server as they find one
started by `up`. ExecStartPost waits for /health: the unit is "started" only once the server answers.

How systemd reads what we write (systemd.unit(5), systemd.service(5), systemd.exec(5)):
- a line ends at `\\n`, `\\r` or NUL, and a line ending in a backslash continues on the next one:
  such a character in a value would start a directive of its own (`ExecStartPre=+...` runs as
  root whatever User= says), so values holding them are refused (UnsafeUnitValue, exit 2);
- `%` starts a specifier in every setting written here (Description=, User=, WorkingDirectory=,
  Environment=, ExecStart=, ExecStartPost=): it is written `%%`;
- ExecStart=/ExecStartPost= words are C-unescaped and unquoted, and `$` substitutes variables in
  every word but the executable path: it is written `$$`; the executable path must hold neither
  `$` nor what systemd refuses there (quotes, backslashes, control characters);
- leading and trailing whitespace of a setting's value is dropped.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dsv4setup.core.errors import UsageError
from dsv4setup.service.systemd import Scope

START_LIMIT_BURST = 3
START_LIMIT_INTERVAL_S = 900
RESTART_SEC = 10
STOP_TIMEOUT_S = 60
_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LINE_BREAKS = {"\n": "a line feed (\\n)", "\r": "a carriage return (\\r)", "\0": "a NUL byte (\\0)"}


class UnsafeUnitValue(UsageError):
    """A value that would not stay one value in the unit file. `where` names it (`env.FOO`, `argv[3]`)."""

    reference = "unit-unsafe-value"

    def __init__(self, where: str, text: str, problem: str) -> None:
        super().__init__(f"{where} cannot be written into a systemd unit: it {problem}",
                         fix=f"change {where}; no value dsv4setup writes into a unit may hold a line break or NUL")
        self.where = where
        self.text = text
        self.problem = problem

    def named(self, where: str) -> UnsafeUnitValue:
        """The same refusal, naming where the value came from (a profile key such as serve.extra_args[3])."""
        return UnsafeUnitValue(where, self.text, self.problem)


def check_value(where: str, text: str) -> str:
    """`text` unless systemd would end the line inside it (or it is no UTF-8); UnsafeUnitValue then."""
    for char, name in _LINE_BREAKS.items():
        if char in text:
            raise UnsafeUnitValue(where, text, f"holds {name} at character {text.index(char) + 1}, which ends the "
                                               "line: the rest would become a unit directive of its own")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeUnitValue(where, text, "is not valid UTF-8") from None
    return text


def check_bare(where: str, text: str) -> str:
    """A value written unquoted (Description=, User=, WorkingDirectory=): whitespace and a backslash at its
    end would be dropped or join the next line, so they are refused too."""
    check_value(where, text)
    if text != text.strip(" \t"):
        raise UnsafeUnitValue(where, text, "starts or ends with whitespace, which systemd drops")
    if text.endswith("\\"):
        raise UnsafeUnitValue(where, text, "ends with a backslash, which joins the next line of the unit to it")
    return text


def specifiers(text: str) -> str:
    """`%` written as `%%`: a literal percent in any setting that expands specifiers."""
    return text.replace("%", "%%")


def quote(arg: str) -> str:
    """One ExecStart= argument: `%` and `$` escaped (specifiers, variables), quoted when it holds other characters."""
    escaped = specifiers(arg).replace("$", "$$")
    if _PLAIN.fullmatch(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_path(path: str) -> str:
    """The executable of an ExecStart= line. systemd refuses one holding a quote, a backslash or a control
    character ("Executable name contains special characters") and substitutes no variable in it (a `$$` would
    stay doubled), so those and `$` are refused; `%` is escaped, a space quoted."""
    if not path.startswith("/"):
        raise UnsafeUnitValue("the interpreter path", path, "is not absolute")
    bad = sorted({c for c in path if c in "\"'\\$\x7f" or c < " "})
    if bad:
        raise UnsafeUnitValue("the interpreter path", path,
                              f"holds {', '.join(map(repr, bad))}: systemd refuses a quote, a backslash or a control "
                              "character in the executable and substitutes no `$` in it; install dsv4setup in a venv "
                              "whose path has none of them")
    quoted = specifiers(path)
    return quoted if _PLAIN.fullmatch(path) else f'"{quoted}"'


def env_line(key: str, value: str) -> str:
    """An Environment= assignment (specifiers escaped; the whole assignment quoted)."""
    if not _ENV_NAME.fullmatch(key):
        raise UnsafeUnitValue(f"env.{key}", key, "is not an environment variable name (letters, digits and _, "
                                                 "not starting with a digit)")
    check_value(f"env.{key}", value)
    text = specifiers(f"{key}={value}").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{text}"'


@dataclass(frozen=True)
class UnitSpec:
    scope: Scope
    workdir: Path
    argv: Sequence[str]
    env: Mapping[str, str]
    host: str
    port: int
    ready_timeout_s: float
    api_key_file: Path | None  # read by the runner (as User=), never by systemd
    user: str | None = None  # User= of a system unit
    description: str = "vLLM server"
    python: str = sys.executable


def render_unit(spec: UnitSpec) -> str:
    """The unit text; UnsafeUnitValue (naming the value) when any value cannot be written safely."""
    for index, arg in enumerate(spec.argv):
        check_value(f"argv[{index}] of the serve command", arg)
    check_value("serve.host", spec.host)
    workdir = str(spec.workdir)
    check_value("the workdir path", workdir)
    key_args = ["--api-key-file", quote(check_value("the API key file path", str(spec.api_key_file)))] \
        if spec.api_key_file else []
    py = exec_path(check_value("the interpreter path", spec.python))
    run = [py, "-m", "dsv4setup.service.run", "--workdir", quote(workdir), "--host", quote(spec.host),
           "--port", str(spec.port), "--env-names", quote(",".join(spec.env) or "-"), *key_args, "--",
           *(quote(a) for a in spec.argv)]
    ready = [py, "-m", "dsv4setup.service.ready", "--host", quote(spec.host), "--port", str(spec.port),
             "--timeout", f"{spec.ready_timeout_s:.0f}"]
    description = check_bare("the unit description", f"dsv4setup {spec.description} ({workdir})")
    # resolved: systemd refuses a WorkingDirectory= that is not normalized (`--workdir ../x`)
    cwd = check_bare("the workdir path", str(spec.workdir.resolve()))
    lines = ["# Written by dsv4setup (`dsv4setup service install`); regenerate rather than edit.",
             "[Unit]", f"Description={specifiers(description)}",
             "After=network-online.target", "Wants=network-online.target",
             f"StartLimitIntervalSec={START_LIMIT_INTERVAL_S}", f"StartLimitBurst={START_LIMIT_BURST}", "",
             "[Service]", "Type=exec"]
    lines += [f"User={specifiers(check_bare('User=', spec.user))}"] if spec.user else []
    lines += [f"WorkingDirectory={specifiers(cwd)}"]
    lines += [env_line(k, v) for k, v in spec.env.items()]
    lines += ["ExecStart=" + " ".join(run), "ExecStartPost=" + " ".join(ready),
              "Restart=on-failure", f"RestartSec={RESTART_SEC}",
              f"TimeoutStartSec={spec.ready_timeout_s + 60:.0f}", f"TimeoutStopSec={STOP_TIMEOUT_S}",
              "KillMode=mixed", "StandardOutput=journal", "StandardError=journal", "",
              "[Install]", f"WantedBy={'default.target' if spec.scope == 'user' else 'multi-user.target'}", ""]
    return "\n".join(lines)
