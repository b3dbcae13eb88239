"""Rendering: the argv the serve step execs, its environment, and the multi-node commands."""

from __future__ import annotations

import json
import shlex

import pytest

from dsv4setup.checkpoint.outputs import CheckpointOutputs
from dsv4setup.core.state import State
from dsv4setup.core.workdir import Workdir
from dsv4setup.preflight.outputs import PreflightOutputs
from dsv4setup.profiles.loader import load_all_profiles
from dsv4setup.profiles.model import Profile
from dsv4setup.profiles.paths import checkpoint_dir
from dsv4setup.profiles.resolve import resolve_profile
from dsv4setup.serve.command import API_SERVER_MODULE, render_nodes, render_serve
from tests.profiles.conftest import done_state

PROFILES = {p.name: p for p in load_all_profiles()}


def flag_value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times"
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_shipped_profile_renders_an_exec_ready_argv(name: str, workdir: Workdir) -> None:
    profile = PROFILES[name]
    command = render_serve(profile, workdir, State())
    argv = command.argv
    assert argv[:3] == [str(workdir.venv_python), "-m", API_SERVER_MODULE]  # never the `vllm` script
    assert all(isinstance(a, str) for a in argv)
    assert flag_value(argv, "--model") == str(checkpoint_dir(profile, workdir))
    assert flag_value(argv, "--tensor-parallel-size") == str(profile.serve.tensor_parallel_size)
    assert flag_value(argv, "--port") == str(profile.serve.port)
    assert flag_value(argv, "--host") == "127.0.0.1"
    assert "--api-key" not in argv
    assert ("--enforce-eager" in argv) == profile.serve.enforce_eager
    assert command.env["VLLM_NO_USAGE_STATS"] == "1"
    assert shlex.split(command.shell()) == ["env", *(f"{k}={v}" for k, v in command.env.items()), *argv]


def test_max_q_renders_tp2_no_custom_all_reduce_and_mtp(workdir: Workdir) -> None:
    argv = render_serve(PROFILES["rtx-pro-6000-maxq-x2"], workdir, State()).argv
    assert flag_value(argv, "--tensor-parallel-size") == "2"
    assert "--disable-custom-all-reduce" in argv
    assert json.loads(flag_value(argv, "--speculative-config")) == {"method": "mtp", "num_speculative_tokens": 1}
    assert [flag_value(argv, f) for f in ("--kv-cache-dtype", "--block-size")] == ["fp8", "256"]
    assert "--trust-remote-code" in argv and "--enforce-eager" not in argv
    assert flag_value(argv, "--max-model-len") == "524288"  # the default preset
    assert flag_value(argv, "--max-num-seqs") == "2"
    assert flag_value(argv, "--gpu-memory-utilization") == "0.93"
    assert flag_value(argv, "--reasoning-parser") == "deepseek_v4"


def test_zero_speculative_tokens_drops_the_speculative_config(workdir: Workdir) -> None:
    resolved = resolve_profile(workdir, "rtx-pro-6000-maxq-x2", ["spec.num_speculative_tokens=0"])
    argv = render_serve(resolved.profile, workdir, State()).argv
    assert "--speculative-config" not in argv
    assert not any("mtp" in a for a in argv)


def test_speculative_config_is_real_json_for_every_k(workdir: Workdir) -> None:
    for k in range(1, 5):
        resolved = resolve_profile(workdir, "gh200-x2", [f"spec.num_speculative_tokens={k}"])
        config = flag_value(render_serve(resolved.profile, workdir, State()).argv, "--speculative-config")
        assert json.loads(config) == {"method": "mtp", "num_speculative_tokens": k}


def test_cpu_tiny_renders_the_cpu_flags(workdir: Workdir) -> None:
    command = render_serve(PROFILES["cpu-tiny"], workdir, State())
    argv = command.argv
    assert flag_value(argv, "--model") == str(workdir.models_dir / "tiny-deepseek-v3-mtp")
    assert [flag_value(argv, f) for f in ("--dtype", "--max-model-len", "--gpu-memory-utilization", "--port")] \
        == ["float32", "256", "0.3", "8011"]
    assert "--enforce-eager" in argv
    for absent in ("--kv-cache-dtype", "--block-size", "--trust-remote-code", "--disable-custom-all-reduce"):
        assert absent not in argv
    assert flag_value(argv, "--served-model-name") == "tiny-mtp"
    assert command.env == {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
                           "VLLM_CACHE_ROOT": str(workdir.root / "cache" / "vllm")}


def test_preflight_findings_add_flags_and_env_where_the_profile_is_silent(workdir: Workdir) -> None:
    outputs = done_state(PreflightOutputs(snapshot="/w/run/hardware.json", report="/w/run/doctor.json", warnings=[],
                                          recommendation=None,
                                          findings={"serve_args": ["--disable-custom-all-reduce"],
                                                    "env": {"NCCL_P2P_DISABLE": "1",
                                                            "VLLM_USE_FLASHINFER_SAMPLER": "1"}}))
    command = render_serve(PROFILES["h200-tp2"], workdir, outputs)
    assert command.argv.count("--disable-custom-all-reduce") == 1
    assert command.env["NCCL_P2P_DISABLE"] == "1"
    maxq = render_serve(PROFILES["rtx-pro-6000-maxq-x2"], workdir, outputs)
    assert maxq.argv.count("--disable-custom-all-reduce") == 1  # already in the profile: not doubled
    assert maxq.env["VLLM_USE_FLASHINFER_SAMPLER"] == "0"  # the profile's own value wins


def test_checkpoint_output_adds_hf_config_path(workdir: Workdir) -> None:
    linted = CheckpointOutputs(path="/models/m", vllm_version="0.33.0", ok=True, counts={"pass": 1}, warnings=[],
                               mtp=None, hf_config_path="/models/fixed-config", stats={})
    argv = render_serve(PROFILES["rtx-pro-6000-x2"], workdir, done_state(linted)).argv
    assert flag_value(argv, "--hf-config-path") == "/models/fixed-config"
    unfixed = done_state(linted.model_copy(update={"hf_config_path": None}))
    assert "--hf-config-path" not in render_serve(PROFILES["rtx-pro-6000-x2"], workdir, unfixed).argv


def test_values_with_spaces_and_quotes_survive_unquoted_in_argv(workdir: Workdir) -> None:
    resolved = resolve_profile(workdir, "cpu-tiny", ["serve.served_model_name=tiny 'mtp' $HOME",
                                                      "serve.extra_args=[--chat-template, '/a b/t.jinja']"])
    command = render_serve(resolved.profile, workdir, State())
    assert flag_value(command.argv, "--served-model-name") == "tiny 'mtp' $HOME"
    assert flag_value(command.argv, "--chat-template") == "/a b/t.jinja"
    assert shlex.split(command.shell())[-len(command.argv):] == command.argv


def test_single_node_profiles_render_no_nodes(workdir: Workdir) -> None:
    profile = PROFILES["h200-tp2"]
    assert render_nodes(profile, workdir, render_serve(profile, workdir, State())) == []
    assert "--distributed-executor-backend" not in render_serve(profile, workdir, State()).argv


def _spark(workdir: Workdir, *sets: str) -> tuple[Profile, list[dict]]:
    profile = resolve_profile(workdir, "dgx-spark-gb10-x2", list(sets)).profile
    return profile, render_nodes(profile, workdir, render_serve(profile, workdir, State()))


def test_two_sparks_render_ray_head_worker_then_serve(workdir: Workdir) -> None:
    profile, nodes = _spark(workdir, "multinode.nodes.0.address=192.168.100.10",
                            "multinode.nodes.1.address=192.168.100.11")
    head, worker = nodes
    ray = str(workdir.venv_dir / "bin" / "ray")
    assert (head["name"], head["role"], worker["role"]) == ("spark-1", "head", "worker")
    assert head["commands"][0]["argv"] == [ray, "start", "--head", "--port", "6379",
                                           "--node-ip-address", "192.168.100.10", "--num-gpus", "1"]
    assert worker["commands"][0]["argv"] == [ray, "start", "--address", "192.168.100.10:6379",
                                             "--node-ip-address", "192.168.100.11", "--num-gpus", "1"]
    serve = head["commands"][-1]["argv"]
    assert serve == render_serve(profile, workdir, State()).argv
    assert flag_value(serve, "--distributed-executor-backend") == "ray"
    assert flag_value(serve, "--tensor-parallel-size") == "2"
    order = sorted((c["order"], n["name"], c["argv"][1]) for n in nodes for c in n["commands"])
    assert [o[1:] for o in order] == [("spark-1", "start"), ("spark-2", "start"), ("spark-1", "status"),
                                      ("spark-1", "-m")]
    for node, ip in ((head, "192.168.100.10"), (worker, "192.168.100.11")):
        for cmd in node["commands"]:
            assert cmd["env"]["NCCL_SOCKET_IFNAME"] == cmd["env"]["GLOO_SOCKET_IFNAME"] == "enp1s0f1np1"
            assert cmd["env"]["VLLM_HOST_IP"] == ip
            assert cmd["env"]["VLLM_TRITON_MLA_SPARSE_HEAD_BLOCK_SIZE"] == "4"
    assert not any("multinode.nodes" in note for note in head["notes"])


def test_sparks_without_addresses_say_what_to_set(workdir: Workdir) -> None:
    _, nodes = _spark(workdir, "multinode.nccl_socket_ifname=null")
    notes = nodes[0]["notes"]
    assert any("multinode.nodes.0.address" in n for n in notes)
    assert any("multinode.nodes.1.address" in n for n in notes)
    assert any("nccl_socket_ifname" in n for n in notes)
    assert "<address of spark-1>:6379" in nodes[1]["commands"][0]["argv"]
    assert "NCCL_SOCKET_IFNAME" not in nodes[0]["commands"][0]["env"]


def test_multinode_tp_must_span_all_node_gpus(workdir: Workdir) -> None:
    from dsv4setup.profiles.loader import ProfileError

    with pytest.raises(ProfileError, match="the nodes hold 2 GPUs but serve.tensor_parallel_size is 4"):
        resolve_profile(workdir, "dgx-spark-gb10-x2", ["serve.tensor_parallel_size=4"])


def test_the_mtp_draft_shares_the_attention_backend_extra_args_names(workdir: Workdir) -> None:
    """cpu-tiny picks vLLM's reference CPU MLA backend; without it in the draft's config vLLM gives the draft
    AMX MLA on a CPU with AMX tiles, which refuses float32 weights (the server dies loading them)."""
    argv = render_serve(PROFILES["cpu-tiny"], workdir, State()).argv
    assert flag_value(argv, "--attention-backend") == "CPU_MLA"
    assert json.loads(flag_value(argv, "--speculative-config"))["attention_backend"] == "CPU_MLA"


@pytest.mark.parametrize("name", ["cpu-tiny", "cpu-tiny-x2"])
def test_cpu_tiny_runs_rotary_embedding_in_pytorch_not_the_cpu_op(workdir: Workdir, name: str) -> None:
    """vllm-cpu 0.32.0's C++ rotary op gets DeepSeek's MLA rope wrong (log-probs off by up to ~0.5 nats, not the
    same in prefill, decode and MTP verification): the CPU profiles turn that custom op off (docs/bench.md)."""
    argv = render_serve(PROFILES[name], workdir, State()).argv
    assert json.loads(flag_value(argv, "--compilation-config")) == {"custom_ops": ["-rotary_embedding"]}
