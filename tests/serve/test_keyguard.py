"""The key guard (serve/keyguard.py) as pure ASGI, without vLLM: every route but GET /health needs the key,
websocket handshakes included; its module imports only the standard library and is put in the workdir;
the serve command names it exactly when the server leaves loopback.

The real server behind it is tests/serve/test_exposed_server_e2e.py.
"""

from __future__ import annotations

import ast
import asyncio
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dsv4setup.core.state import State
from dsv4setup.core.workdir import Workdir
from dsv4setup.profiles.loader import load_all_profiles
from dsv4setup.serve import keyguard
from dsv4setup.serve.apikey import server_api_key
from dsv4setup.serve.command import render_serve
from dsv4setup.serve.guard import GUARD_MIDDLEWARE, GUARD_MODULE, guard_dir, guard_file, install_guard
from dsv4setup.serve.keyguard import KeyGuard

KEY = "guard-test-key-7d2f01"
PROFILES = {p.name: p for p in load_all_profiles()}
ROUTES = ["/invocations", "/tokenize", "/detokenize", "/v1/chat/completions", "/v1/completions", "/v1/models",
          "/metrics", "/metrics/", "/version", "/ping", "/pooling", "/score", "/rerank", "/load", "/is_sleeping",
          "/health/", "/healthz", "/health/../v1/models", "/", "/docs", "/openapi.json"]


class Inner:
    """The app behind the guard: records what reached it and answers 200."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen.append((scope["type"], scope.get("path", "")))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


def call(scope: dict[str, Any], monkeypatch: pytest.MonkeyPatch, key: str | None = KEY) -> tuple[Inner, list[dict]]:
    """Run one request through a KeyGuard built as vLLM builds it (the app its only argument)."""
    if key is None:
        monkeypatch.delenv("VLLM_API_KEY", raising=False)
    else:
        monkeypatch.setenv("VLLM_API_KEY", key)
    inner, sent = Inner(), []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(KeyGuard(inner)(scope, receive, send))
    return inner, sent


def http(path: str, method: str = "POST", headers: dict[str, str] | None = None, root_path: str = "") -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": root_path,
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}


def bearer(key: str = KEY, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {key}"}


def status(sent: list[dict]) -> int:
    return next(m["status"] for m in sent if m["type"].endswith("response.start"))


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_but_health_answers_401_without_the_key(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for method in ("GET", "POST", "OPTIONS"):
        inner, sent = call(http(path, method), monkeypatch)
        assert inner.seen == [] and status(sent) == 401, (method, path)
        assert dict(sent[0]["headers"])[b"www-authenticate"] == b"Bearer"
        assert sent[1]["body"] == b'{"error": "Unauthorized"}'


@pytest.mark.parametrize("path", ROUTES)
def test_with_the_key_every_route_reaches_the_app(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    inner, sent = call(http(path, headers=bearer()), monkeypatch)
    assert inner.seen == [("http", path)] and status(sent) == 200


@pytest.mark.parametrize("header", [bearer("wrong-key"), bearer(KEY + "x"), bearer(KEY[:-1]), bearer(""),
                                    bearer(KEY, "Basic"), {"Authorization": KEY}, {"X-Api-Key": KEY},
                                    {"Authorization": f"Bearer{KEY}"}])
def test_a_wrong_or_misplaced_key_is_refused(header: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    inner, sent = call(http("/invocations", headers=header), monkeypatch)
    assert inner.seen == [] and status(sent) == 401


def test_the_bearer_scheme_is_case_insensitive_as_in_vllms_own_check(monkeypatch: pytest.MonkeyPatch) -> None:
    for scheme in ("bearer", "BEARER", "Bearer"):
        inner, _ = call(http("/invocations", headers=bearer(KEY, scheme)), monkeypatch)
        assert inner.seen == [("http", "/invocations")]


def test_health_is_open_for_readiness_probes_and_only_get_and_head(monkeypatch: pytest.MonkeyPatch) -> None:
    for method in ("GET", "HEAD"):
        inner, sent = call(http("/health", method), monkeypatch)
        assert inner.seen == [("http", "/health")] and status(sent) == 200
    inner, sent = call(http("/health", "POST"), monkeypatch)
    assert inner.seen == [] and status(sent) == 401
    inner, _ = call(http("/api/health", "GET", root_path="/api"), monkeypatch)  # behind --root-path
    assert inner.seen == [("http", "/api/health")]


def test_a_cors_preflight_passes_a_bare_options_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    inner, _ = call(http("/v1/chat/completions", "OPTIONS", preflight), monkeypatch)
    assert inner.seen == [("http", "/v1/chat/completions")]  # vLLM's CORS middleware answers it, no route runs
    inner, sent = call(http("/v1/chat/completions", "OPTIONS", {"Origin": "https://ui.example"}), monkeypatch)
    assert inner.seen == [] and status(sent) == 401


def test_websocket_handshakes_without_the_key_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = {"type": "websocket", "path": "/v1/realtime", "headers": [], "extensions": {"websocket.http.response": {}}}
    inner, sent = call(ws, monkeypatch)
    assert inner.seen == [] and sent[0] == {"type": "websocket.http.response.start", "status": 401,
                                            "headers": keyguard.UNAUTHORIZED_HEADERS}
    inner, sent = call({**ws, "extensions": {}}, monkeypatch)  # a server without the denial extension: close
    assert inner.seen == [] and sent == [{"type": "websocket.close", "code": 1008}]
    inner, sent = call({**ws, "path": "/health"}, monkeypatch)  # /health is open to http only
    assert inner.seen == [] and status(sent) == 401
    inner, _ = call({**ws, "headers": [(b"authorization", f"Bearer {KEY}".encode())]}, monkeypatch)
    assert inner.seen == [("websocket", "/v1/realtime")]


def test_lifespan_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    inner, _ = call({"type": "lifespan"}, monkeypatch)
    assert inner.seen == [("lifespan", "")]


def test_no_key_in_the_environment_fails_closed(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for key in (None, ""):
        inner, sent = call(http("/invocations", headers=bearer("")), monkeypatch, key=key)
        assert inner.seen == [] and status(sent) == 401
        inner, _ = call(http("/health", "GET"), monkeypatch, key=key)
        assert inner.seen == [("http", "/health")]
    assert "VLLM_API_KEY is not set" in capsys.readouterr().err


def test_the_module_imports_only_the_standard_library() -> None:
    """The serving venv has no dsv4setup: the copied module must stand alone."""
    tree = ast.parse(Path(keyguard.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_install_puts_the_module_where_pythonpath_points_and_a_bare_python_imports_it(workdir: Workdir) -> None:
    path = install_guard(workdir)
    assert path == guard_file(workdir) == guard_dir(workdir) / f"{GUARD_MODULE}.py"
    assert path.read_text() == Path(keyguard.__file__).read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    probe = f"import {GUARD_MODULE}, inspect; print(inspect.isclass({GUARD_MIDDLEWARE}))"
    done = subprocess.run([sys.executable, "-S", "-c", probe], env={"PYTHONPATH": str(guard_dir(workdir))},
                          capture_output=True, text=True, check=False)  # -S: no site-packages, no dsv4setup
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


def test_install_rewrites_a_changed_module_and_replaces_a_symlink(workdir: Workdir, tmp_path: Path) -> None:
    path = install_guard(workdir)
    path.write_text("class KeyGuard: pass\n")
    assert install_guard(workdir).read_text() == Path(keyguard.__file__).read_text()
    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text(path.read_text())
    path.unlink()
    path.symlink_to(elsewhere)
    install_guard(workdir)
    assert not path.is_symlink() and path.read_text() == elsewhere.read_text()


def test_the_key_and_the_guard_are_prepared_together_off_loopback_only(workdir: Workdir,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSV4SETUP_API_KEY", raising=False)
    assert server_api_key(workdir, "127.0.0.1") is None and not guard_file(workdir).exists()
    assert server_api_key(workdir, "0.0.0.0") and guard_file(workdir).is_file()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "fd00::5", "myhost.lan"])
def test_a_server_off_loopback_runs_the_guard_from_the_workdir(host: str, workdir: Workdir) -> None:
    profile = PROFILES["cpu-tiny"]
    profile = profile.model_copy(update={"serve": profile.serve.model_copy(update={"host": host})})
    command = render_serve(profile, workdir, State())
    argv = command.argv
    assert argv[argv.index("--middleware") + 1] == GUARD_MIDDLEWARE and argv.count("--middleware") == 1
    assert command.env["PYTHONPATH"] == str(guard_dir(workdir))
    assert "VLLM_API_KEY" not in command.env and "--api-key" not in argv


def test_a_profile_pythonpath_is_kept_after_the_guards(workdir: Workdir) -> None:
    profile = PROFILES["cpu-tiny"]
    profile = profile.model_copy(update={"serve": profile.serve.model_copy(update={"host": "0.0.0.0"}),
                                         "env": {**profile.env, "PYTHONPATH": "/opt/plugins"}})
    assert render_serve(profile, workdir, State()).env["PYTHONPATH"] == f"{guard_dir(workdir)}:/opt/plugins"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_loopback_server_has_no_guard(host: str, workdir: Workdir) -> None:
    profile = PROFILES["cpu-tiny"]
    profile = profile.model_copy(update={"serve": profile.serve.model_copy(update={"host": host})})
    command = render_serve(profile, workdir, State())
    assert "--middleware" not in command.argv and "PYTHONPATH" not in command.env


def test_a_multinode_heads_server_gets_the_same_guard(workdir: Workdir) -> None:
    from dsv4setup.serve.command import render_nodes

    profile = PROFILES["cpu-tiny-x2"]
    profile = profile.model_copy(update={"serve": profile.serve.model_copy(update={"host": "0.0.0.0"})})
    serve = render_serve(profile, workdir, State())
    head = next(n for n in render_nodes(profile, workdir, serve) if n["role"] == "head")
    start = next(c for c in head["commands"] if c["argv"] == serve.argv)
    assert GUARD_MIDDLEWARE in start["argv"] and start["env"]["PYTHONPATH"] == str(guard_dir(workdir))
