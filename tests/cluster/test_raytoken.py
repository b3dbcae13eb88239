"""Ray's cluster token: made 0600 on the head, a worker told how to copy it, every Ray process and client
of ours given RAY_AUTH_MODE=token and the token's path explicitly (never the user's ~/.ray), the token
itself in no argv, plan or log. The real refusal of an intruder is tests/e2e/test_multinode_cpu.py."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4setup.cluster.raynode import PROBE_SCRIPT
from dsv4setup.cluster.raytoken import (
    copy_command,
    ensure_head_token,
    ray_auth_env,
    token_file,
    token_problem,
    token_rejected,
)
from dsv4setup.cluster.step import ClusterStep
from dsv4setup.core.errors import StepError
from dsv4setup.core.secrets import redact
from dsv4setup.core.state import State
from dsv4setup.core.workdir import Workdir
from dsv4setup.engine import RunContext
from dsv4setup.profiles.resolve import resolve_profile
from dsv4setup.serve.command import render_nodes, render_serve

AUTH_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")


def test_the_head_makes_a_private_random_token_once(workdir: Workdir) -> None:
    assert ensure_head_token(workdir)
    path = token_file(workdir)
    assert path == workdir.root / "secrets" / "ray-auth-token"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    token = path.read_text().strip()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 bits, hex, as Ray's own generator makes them
    assert redact(f"token={token}") == "token=***"  # registered: no log or JSON shows it
    assert not ensure_head_token(workdir) and path.read_text().strip() == token  # kept, not replaced
    assert token_problem(path) is None


def test_a_token_file_that_is_missing_shared_empty_or_a_link_is_not_usable(tmp_path: Path) -> None:
    path = tmp_path / "ray-auth-token"
    assert token_problem(path) == f"{path} does not exist"
    path.write_text("")
    path.chmod(0o600)
    assert token_problem(path) == f"{path} is empty"
    path.write_text("ab" * 32)
    path.chmod(0o644)
    assert f"is readable by others (mode 0644): `chmod 600 {path}`" in str(token_problem(path))
    path.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(path)
    assert "is not a plain file" in str(token_problem(link))


def test_the_copy_command_creates_the_file_0600_and_quotes_every_path(tmp_path: Path) -> None:
    path = Path("/srv/my wd;id/secrets/ray-auth-token")
    command = copy_command("192.168.100.10", path, path)
    assert command == ("(umask 077 && mkdir -p '/srv/my wd;id/secrets' && scp "
                       "'192.168.100.10:/srv/my wd;id/secrets/ray-auth-token' '/srv/my wd;id/secrets/ray-auth-token')")
    assert "'[fd00::1]:/t'" in copy_command("fd00::1", Path("/t"), Path("/t"))
    # run for real with a stand-in scp that copies locally: the file lands 0600 in a new 0700 directory
    source, target = tmp_path / "head" / "token", tmp_path / "worker dir" / "secrets" / "token"
    source.parent.mkdir()
    source.write_text("cd" * 32)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scp").write_text('#!/bin/sh\ncp "${1#*:}" "$2"\n')
    (bin_dir / "scp").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", copy_command("10.0.0.1", source, target)], check=True, env=env)
    assert target.read_text() == "cd" * 32
    assert target.stat().st_mode & 0o777 == 0o600 and target.parent.stat().st_mode & 0o777 == 0o700


def test_a_worker_without_the_heads_token_fails_at_once_with_the_copy_command(workdir: Workdir) -> None:
    profile = resolve_profile(workdir, "cpu-tiny-x2", []).profile
    multi = profile.multinode
    assert multi is not None
    ctx = RunContext(workdir, profile, State())
    with pytest.raises(StepError, match="node node2 has no usable copy of the head's Ray token") as info:
        ClusterStep._token(ctx, multi, multi.nodes[1])
    path = shlex.quote(str(token_file(workdir)))
    assert info.value.known_failure == "cluster-token-missing"
    assert f"scp {shlex.quote('10.200.0.1:' + str(token_file(workdir)))} {path}" in (info.value.fix or "")
    assert "dsv4setup up --node node2" in (info.value.fix or "")
    assert not token_file(workdir).exists()  # a worker never makes its own: it would not be the head's
    ClusterStep._token(ctx, multi, multi.nodes[0])  # the head makes it
    ClusterStep._token(ctx, multi, multi.nodes[1])  # and the copy (here: the same file) is usable


def test_a_refused_token_is_recognised_in_rays_output(tmp_path: Path) -> None:
    log = tmp_path / "cluster.log"
    log.write_text("ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is "
                   "missing or incorrect.\n")  # Ray 2.60's `ray start --address` against a head with another token
    assert token_rejected(log)
    assert not token_rejected(log, since=log.stat().st_size)  # an earlier run's line is not this start's
    log.write_text("ConnectionError: could not reach the head\n")
    assert not token_rejected(log) and not token_rejected(tmp_path / "absent.log")


def test_the_server_and_every_plan_command_get_the_token_by_path_never_the_token(workdir: Workdir) -> None:
    profile = resolve_profile(workdir, "cpu-tiny-x2", []).profile
    ensure_head_token(workdir)
    token = token_file(workdir).read_text().strip()
    serve = render_serve(profile, workdir, State())
    expected = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file(workdir))}
    assert {k: serve.env[k] for k in AUTH_KEYS} == expected == ray_auth_env(workdir)
    nodes = render_nodes(profile, workdir, serve)
    commands = [c for n in nodes for c in n["commands"]]
    assert len(commands) == 4 and all({k: c["env"][k] for k in AUTH_KEYS} == expected for c in commands)
    assert all(f"RAY_AUTH_TOKEN_PATH={token_file(workdir)}" in c["command"] for c in commands)
    note = next(n for n in nodes[1]["notes"] if "token authentication" in n)
    assert "scp" in note and "umask 077" in note
    assert token not in repr(nodes) + repr(serve.to_dict())


def test_no_module_beside_the_probe_shadows_the_standard_library() -> None:
    """ray_probe.py runs as a script from dsv4setup/cluster/, first on sys.path there: a `token.py` beside it
    broke `import ray` in the probe (tokenize imports token), and the head waited for an answer that never came."""
    names = {p.stem for p in Path(PROBE_SCRIPT).parent.glob("*.py")}
    assert names & set(sys.stdlib_module_names) == set()
