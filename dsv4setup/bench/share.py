"""`bench report --share`: a Markdown summary of the last run for people to post, with nothing of this machine's.

It says what was measured (hardware model, profile, vLLM and patches, checkpoint, prompts) and
acceptance per category and k, and lossless per k. It is built from the bench document, then
scrubbed: the host's names, every absolute path (the workdir's first, then anything that looks
like one), and every secret dsv4setup knows (API keys, tokens) become placeholders.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterable
from typing import Any

from dsv4setup.bench import BENCH_SCHEMA
from dsv4setup.bench.report import DOCUMENT_NAME, MARKDOWN_NAME, fmt, fmt_rate
from dsv4setup.core.errors import UsageError
from dsv4setup.core.secrets import redact
from dsv4setup.core.workdir import Workdir

PATH_RE = re.compile(r"(?<![\w.:/~-])~?/[\w.@+-]+(?:/[\w.@+-]*)+")
REST_OF_PATH = r"[^\s`'\"),;|]*"
HOST = "<host>"
PATH = "<path>"


def host_names() -> list[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    return sorted((n for n in names if n and n not in ("localhost", "localhost.localdomain")), key=len, reverse=True)


def scrub(text: str, paths: Iterable[str], hosts: Iterable[str], secrets: Iterable[str]) -> str:
    """Secrets, then the given paths and host names, then anything shaped like an absolute path."""
    text = redact(text, [s for s in secrets if s])
    for path in sorted((p for p in paths if p), key=len, reverse=True):
        text = re.sub(re.escape(path) + REST_OF_PATH, PATH, text)
    for host in hosts:
        text = re.sub(rf"(?<![\w-]){re.escape(host)}(?![\w-])", HOST, text)
    return PATH_RE.sub(PATH, text)


def _setup(fp: dict[str, Any]) -> list[str]:
    vllm, patches, ckpt, hw = fp["vllm"], fp["patches"], fp["checkpoint"], fp["hardware"]
    gpus = ", ".join(f"{g['name']} (SM {g['sm']})" for g in hw["gpus"]) or "no GPU"
    host = hw["host"]
    weights = (f"{ckpt['repo']} @ {ckpt['revision']}" if ckpt.get("repo")
               else f"generated ({ckpt.get('generator')})" if ckpt.get("generator") else ckpt.get("route") or "-")
    return [f"- **Hardware**: {gpus}; interconnect {hw['interconnect']}; {host.get('cpu_model') or host.get('arch')}",
            f"- **vLLM**: {vllm['package']} {vllm['version']}" + (f" ({vllm['commit']})" if vllm.get("commit") else ""),
            "- **Patches**: " + (", ".join(patches["applied"] + [f"{p} (upstream)" for p in patches["upstream"]])
                                 or "none"),
            f"- **Checkpoint**: {weights}",
            f"- **Profile**: {fp['profile']['name']}"
            + (" (derived, unverified)" if fp["profile"].get("derived") else "")]


def _prompts(doc: dict[str, Any], workload: dict[str, Any]) -> str:
    dataset = doc["matrix"].get("dataset") or {"name": "random"}
    if dataset["name"] == "random":
        return (f"- **Prompts**: vLLM's random dataset, {workload['input_len']} tokens in, "
                f"{workload['output_len']} out, {workload['num_prompts']} prompts, seed {workload['seed']}")
    return (f"- **Prompts**: `{dataset['name']}` (sha256 `{dataset['sha256'][:12]}`), {dataset['num_prompts']} "
            f"prompts in {len(dataset['categories'])} categories, {workload['output_len']} tokens out, "
            f"temperature {workload['temperature']}, sent without chat template")


def share_markdown(doc: dict[str, Any]) -> str:
    """The summary of one bench document, not yet scrubbed (see `shareable`)."""
    rows = doc["rows"]
    out = [f"# MTP acceptance on {doc['profile']} (dsv4setup bench)", ""]
    if not rows:
        return "\n".join([*out, "No cell was measured.", ""])
    out += [*_setup(rows[0]["fingerprint"]), _prompts(doc, rows[0]["fingerprint"]["workload"]), ""]
    ks = sorted({r["k"] for r in rows})
    out += ["| shape | c | category | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---|---:|---|" + "---|" * len(ks)]
    cells = {(x["shape"], x["concurrency"], x["category"], x["k"]): x for x in doc["summary"]}
    for shape, conc, category in dict.fromkeys((x["shape"], x["concurrency"], x["category"]) for x in doc["summary"]):
        values = []
        for k in ks:
            x = cells.get((shape, conc, category, k))
            values.append("-" if x is None else "failed" if x["status"] != "ok" else
                          f"{fmt(x['output_throughput'])} tok/s" + (
                              f", accept {fmt_rate(x['acceptance_rate'])}, length {fmt(x['acceptance_length'], '.2f')}"
                              if x["acceptance_rate"] is not None else ""))
        out.append(f"| {shape} | {conc} | {category or 'all'} | " + " | ".join(values) + " |")
    out.append("")
    for k, t in (doc.get("lossless") or {}).get("by_k", {}).items():
        out.append(f"- lossless at k={k}: {t['identical']}/{t['total']} prompts gave k=0's greedy text")
    for shape, best in doc["best"].items():
        out.append(f"- best k for {shape}: {best['k']}")
    return "\n".join([*out, "", f"Measured {doc['started_at']} with dsv4setup."]) + "\n"


def workdir_secrets(workdir: Workdir) -> list[str]:
    """Every secret dsv4setup knows of this workdir and environment: the server's API key, HF token, env keys."""
    from dsv4setup.core.secrets import hf_token, known_secrets
    from dsv4setup.serve.apikey import api_key_file

    try:
        stored = api_key_file(workdir).read_text(encoding="utf-8").strip()
    except OSError:
        stored = ""
    return [s for s in (stored, hf_token() or "", *known_secrets()) if s]


def shareable(doc: dict[str, Any], secrets: Iterable[str]) -> str:
    """share_markdown, scrubbed of the workdir and every other path, the host's names, keys and tokens."""
    return scrub(share_markdown(doc), [doc.get("workdir") or ""], host_names(), secrets)


def report_text(workdir: Workdir, share: bool) -> str:
    """What `bench report` prints: the last run's report.md, or (share) the scrubbed summary of its document."""
    source = workdir.bench_dir / (DOCUMENT_NAME if share else MARKDOWN_NAME)
    try:
        text = source.read_text(encoding="utf-8")
        doc = json.loads(text) if share else None
    except (OSError, ValueError):
        raise UsageError(f"no bench run to report: {source} is missing or unreadable",
                         fix=f"run `dsv4setup bench --workdir {workdir.root}` first") from None
    if not share:
        return text
    if not (isinstance(doc, dict) and doc.get("schema") == BENCH_SCHEMA):
        raise UsageError(f"{source} is not a {BENCH_SCHEMA} document (an older dsv4setup wrote it?)",
                         fix=f"run `dsv4setup bench --workdir {workdir.root}` again")
    return shareable(doc, workdir_secrets(workdir))
