"""download: the checkpoint on disk, verified. From the hub (pinned revision), a local directory,
or dsv4setup's tiny-model generator (the CPU profile).

Options (ctx.options): `download_verify` re-hashes every file and re-fetches bad ones;
`free_space` replaces the free-disk reading (a callable Path -> bytes); `download_workers`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from pathlib import Path
from typing import Any

from dsv4setup.core.errors import StepError
from dsv4setup.core.finding import Finding, postcondition
from dsv4setup.download.outputs import DownloadOutputs
from dsv4setup.download.route import Route, model_route
from dsv4setup.engine import RunContext, Step
from dsv4setup.profiles.paths import checkpoint_dir

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def route(ctx: RunContext) -> Route:
    return model_route(ctx.profile.model)


def _generator_digest() -> str | None:
    """A changed generator must regenerate the checkpoint: its source is part of the fingerprint."""
    spec = importlib.util.find_spec("dsv4setup.tinymodel")
    if spec is None or spec.origin is None:
        return None
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:16]


def _listing(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts]
    return len(files), sum(p.stat().st_size for p in files)


def _local_problem(path: Path) -> str | None:
    if not path.is_dir():
        return f"{path} is not a directory"
    if not (path / "config.json").is_file():
        return f"{path} has no config.json"
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir()):
        return f"{path} has no weight files (*.safetensors)"
    return None


def installs_to_come(ctx: RunContext) -> list[tuple[str, int, Path]]:
    """(name, bytes, where) of what the install steps not done yet still write: with the concurrent engine they
    run beside the download, so its disk check counts them too. Each is net of what is there already; the
    installer's cache counts where the installer keeps a copy (pip, or uv's cache on another filesystem than
    the venv: uv links the venv's files to its cache where it can)."""
    from dsv4setup.core.state import StepStatus
    from dsv4setup.download.disk import filesystem_key, installer_cache_dir
    from dsv4setup.hardware.rules import GB, load_rules
    from dsv4setup.preflight.host_facts import tree_bytes

    def pending(step: str) -> bool:
        record = ctx.state.steps.get(step)
        return record is None or record.status != StepStatus.DONE

    limits = load_rules().host(ctx.profile.match.cpu_only)
    wd, vllm = ctx.workdir, ctx.profile.vllm
    parts: list[tuple[str, int, Path]] = []
    if pending("vllm"):
        parts.append(("serving venv", max(0, round(limits.disk_venv_gb * GB) - tree_bytes(wd.venv_dir)), wd.venv_dir))
        cache = installer_cache_dir(vllm.installer)
        if vllm.installer == "pip" or filesystem_key(cache) != filesystem_key(wd.venv_dir):
            name = "pip cache" if vllm.installer == "pip" else "uv cache"
            parts.append((name, round(limits.disk_install_cache_gb * GB), cache))
        if vllm.source == "source":
            parts.append(("vLLM source build", round(limits.disk_source_build_gb * GB), wd.root))
    if pending("toolkit") and ctx.profile.toolkit.version:
        parts.append(("CUDA toolkit", max(0, round(limits.disk_toolkit_gb * GB) - tree_bytes(wd.toolkit_dir)),
                      wd.toolkit_dir))
    return parts


class DownloadStep(Step):
    name = "download"
    description = "Fetch the checkpoint (pinned revision, resumable, sha256-verified) or prepare the local one"
    # Needs no other step: `dsv4setup download` runs it alone. In `up` it waits for preflight (no 150 GB for
    # a machine that fails its checks), then runs beside toolkit -> vllm -> patches.
    after = ("preflight",)
    Outputs = DownloadOutputs

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        model = ctx.profile.model
        cache = None
        if route(ctx) == "repo":
            from dsv4setup.download.transfer import hf_cache_setting  # the hub client: only for a repo

            cache = hf_cache_setting()
        return {"route": route(ctx), "repo": model.repo, "revision": model.revision,
                "allow_patterns": model.allow_patterns, "local_path": model.local_path, "generate": model.generate,
                "generator_source": _generator_digest() if model.generate else None,
                "path": str(checkpoint_dir(ctx.profile, ctx.workdir)), "hf_cache": str(cache) if cache else None}

    def is_done(self, ctx: RunContext) -> Finding:
        path = checkpoint_dir(ctx.profile, ctx.workdir)
        if route(ctx) != "repo":
            problem = _local_problem(path)
            return postcondition(problem is None, problem or f"{path} has config.json and weights")
        from dsv4setup.download.verify import cheap_problems, read_manifest

        model = ctx.profile.model
        manifest = read_manifest(path)
        if manifest is None or not manifest.complete:
            return postcondition(False, f"no complete download recorded for {path}")
        if (manifest.repo, manifest.revision, manifest.allow_patterns) != (
                model.repo, model.revision, model.allow_patterns):
            return postcondition(False, f"{path} holds {manifest.repo}@{manifest.revision}, "
                                        f"the profile wants {model.repo}@{model.revision}")
        if not Path(path).is_dir():
            return postcondition(False, f"{path} is missing")
        problems = cheap_problems(manifest)
        if problems:
            return postcondition(False, "; ".join(problems[:3]) + (f" (+{len(problems) - 3})" if len(problems) > 3
                                                                    else ""))
        return postcondition(True, f"{len(manifest.expected)} files of {manifest.repo}@{manifest.commit[:12]} "
                                   f"match their verified sizes")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        path = checkpoint_dir(ctx.profile, ctx.workdir)
        kind = route(ctx)
        if kind == "local":
            return self._local(path)
        if kind == "generate":
            return self._generate(ctx, path)
        return self._repo(ctx, path)

    def _local(self, path: Path) -> dict[str, Any]:
        problem = _local_problem(path)
        if problem:
            raise StepError(f"model.local_path: {problem}",
                            fix="point model.local_path at a checkpoint directory (config.json + *.safetensors), "
                                 "e.g. --set model.local_path=/data/DeepSeek-V4-Flash")
        files, size = _listing(path)
        return {"path": str(path), "route": "local", "repo": None, "revision": None, "files": files, "bytes": size}

    def _generate(self, ctx: RunContext, path: Path) -> dict[str, Any]:
        generator = ctx.profile.model.generate
        if generator != "tiny-deepseek-v3-mtp":
            raise StepError(f"unknown checkpoint generator {generator!r}", fix="use tiny-deepseek-v3-mtp")
        tinymodel = importlib.import_module("dsv4setup.tinymodel")
        ctx.progress(f"generating the tiny DeepSeek-V3 + MTP checkpoint into {path}")
        tinymodel.generate_tiny_checkpoint(path)
        problem = _local_problem(path)
        if problem:
            raise StepError(f"the tiny-model generator left an incomplete checkpoint: {problem}",
                            fix=f"remove {path} and run again; report it if it persists")
        files, size = _listing(path)
        return {"path": str(path), "route": "generate", "repo": None, "revision": None, "files": files,
                "bytes": size, "generator": generator}

    def _repo(self, ctx: RunContext, path: Path) -> dict[str, Any]:
        from dsv4setup.core.secrets import hf_token
        from dsv4setup.download.transfer import Downloader, hf_cache_setting
        from dsv4setup.hub.access import hub_logs_to

        model = ctx.profile.model
        assert model.repo is not None
        log = ctx.require_log()
        token = hf_token()
        log.line(f"repo {model.repo} revision {model.revision} -> {path}; token: {'set' if token else 'none'}")

        def report(message: str) -> None:
            ctx.progress(f"download: {message}")

        downloader = Downloader(model.repo, model.revision, path, allow_patterns=model.allow_patterns, token=token,
                                workers=ctx.options.get("download_workers"), free_space=ctx.options.get("free_space"),
                                report=report, hf_cache=hf_cache_setting(), measure=ctx.transfer,
                                beside=installs_to_come(ctx))
        with hub_logs_to(log.line):
            result = downloader.run(full_verify=bool(ctx.options.get("download_verify")))
        if result.refetched:
            log.line(f"re-fetched after a failed verification: {', '.join(result.refetched)}")
        return {**result.outputs(), "route": "repo"}


STEP = DownloadStep
