"""The systemd unit text of a workdir's server.

ExecStart is the runner (`python -m dsv4setup.service.run`) followed by exactly the plan's argv;
the plan's environment is in Environment= lines, the API key (when the server needs one) in an
EnvironmentFile kept 0600 under <workdir>/secrets, never in the unit. The runner starts vLLM
through the log pump (the journal and logs/serve.log get every line) and writes the usual server
record, so `status`, `top` and `down` find the server as they find one started by `up`.
ExecStartPost waits for /health: the unit is "started" only once the server answers.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dsv4setup.service.systemd import Scope

START_LIMIT_BURST = 3
START_LIMIT_INTERVAL_S = 900
RESTART_SEC = 10
STOP_TIMEOUT_S = 60
_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def quote(arg: str) -> str:
    """One ExecStart= word: `%` and `$` escaped (specifiers, variables), quoted when it holds other characters."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.match(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def path_value(path: Path) -> str:
    """A path setting (WorkingDirectory=, EnvironmentFile=): taken as is, specifiers escaped, never quoted."""
    return str(path).replace("%", "%%")


def env_line(key: str, value: str) -> str:
    """An Environment= assignment (specifiers escaped; the whole assignment quoted)."""
    text = f"{key}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
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
    key_file: Path | None  # EnvironmentFile with VLLM_API_KEY=..., 0600
    user: str | None = None  # User= of a system unit
    description: str = "vLLM server"
    python: str = sys.executable


def render_unit(spec: UnitSpec) -> str:
    py = quote(spec.python)
    run = [py, "-m", "dsv4setup.service.run", "--workdir", quote(str(spec.workdir)), "--host", quote(spec.host),
           "--port", str(spec.port), "--env-names", quote(",".join(spec.env) or "-"), "--",
           *(quote(a) for a in spec.argv)]
    ready = [py, "-m", "dsv4setup.service.ready", "--host", quote(spec.host), "--port", str(spec.port),
             "--timeout", f"{spec.ready_timeout_s:.0f}"]
    lines = ["# Written by dsv4setup (`dsv4setup service install`); regenerate rather than edit.",
             "[Unit]", f"Description=dsv4setup {spec.description} ({spec.workdir})",
             "After=network-online.target", "Wants=network-online.target",
             f"StartLimitIntervalSec={START_LIMIT_INTERVAL_S}", f"StartLimitBurst={START_LIMIT_BURST}", "",
             "[Service]", "Type=exec"]
    lines += [f"User={spec.user}"] if spec.user else []
    lines += [f"WorkingDirectory={path_value(spec.workdir)}"]
    lines += [env_line(k, v) for k, v in spec.env.items()]
    lines += [f"EnvironmentFile={path_value(spec.key_file)}"] if spec.key_file else []
    lines += ["ExecStart=" + " ".join(run), "ExecStartPost=" + " ".join(ready),
              "Restart=on-failure", f"RestartSec={RESTART_SEC}",
              f"TimeoutStartSec={spec.ready_timeout_s + 60:.0f}", f"TimeoutStopSec={STOP_TIMEOUT_S}",
              "KillMode=mixed", "StandardOutput=journal", "StandardError=journal", "",
              "[Install]", f"WantedBy={'default.target' if spec.scope == 'user' else 'multi-user.target'}", ""]
    return "\n".join(lines)
