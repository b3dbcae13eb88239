"""`dsv4setup bench [--k ..] [--shape ..] [--concurrency ..] [--dataset ..] [--apply-best]` and `bench compare A B`."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dsv4setup.cli import app
from dsv4setup.cli.common import JsonOpt, ProfileOpt, SetOpt, WorkdirOpt, err, out, workdir_from
from dsv4setup.cli.output import Document, emit
from dsv4setup.core.errors import EXIT_FAILED, DsvError

TABLE_WIDTH = 140
bench_app = typer.Typer(
    help="The matched MTP benchmark: for each k, restart the server with that num_speculative_tokens and "
         "measure it with vLLM's own `vllm bench serve`; report, chart, compare, apply the best k.")
app.add_typer(bench_app, name="bench")

KOpt = Annotated[str | None, typer.Option(
    "--k", help="num_speculative_tokens values, comma-separated (0: no speculative decoding). "
                "Default: the profile's bench.k_values.", show_default=False)]
ShapeOpt = Annotated[str | None, typer.Option(
    "--shape", help="Bench shape name(s) from the profile, comma-separated: long (8192 in / 1024 out), "
                    "short (32 in / 256 out), or one the profile defines. Default: bench.default_shape.",
    show_default=False)]
ConcurrencyOpt = Annotated[str | None, typer.Option(
    "--concurrency", help="Concurrent requests (vllm bench serve --max-concurrency), comma-separated. "
                          "Default: the profile's bench.concurrency.", show_default=False)]
DatasetOpt = Annotated[str, typer.Option(
    "--dataset", help="The prompts: random (vLLM's random token ids at the shape's lengths), mix (dsv4setup's own "
                      "prompt mix, the part that fits the profile's context), or FILE: JSONL with `prompt` "
                      "(optional `category`), ShareGPT JSON, or SpecBench's question.jsonl. With a prompt set the "
                      "shape gives the output length and every prompt is sent once.")]
WeightsOpt = Annotated[str | None, typer.Option(
    "--weights", help="With a prompt set: weigh its categories in the choice of the best k, e.g. coding=3,qa=1 "
                      "(a category not named weighs 1).", show_default=False)]
ApplyOpt = Annotated[bool, typer.Option(
    "--apply-best", help="Write the winning k into the workdir overrides (dsv4setup.yaml) with the evidence; "
                         "the server is left running at that k and the next `up` serves it.")]


class BarDisplay:
    """A rich progress bar over the matrix on stderr; a line per finished cell above it."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]bench[/]"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"), console=console,
                                 transient=True)
        self.task = self.progress.add_task("", total=None)

    def __enter__(self) -> BarDisplay:
        self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()

    def start(self, total: int) -> None:
        self.progress.update(self.task, total=total, completed=0)

    def status(self, text: str) -> None:
        self.progress.update(self.task, description=text[:90])

    def advance(self, row: dict[str, Any]) -> None:
        self.progress.advance(self.task)
        where = f"k={row['k']} {row['shape']} c={row['concurrency']}" + (
            f" {row['category']}" if row["category"] else "")
        if row["status"] == "ok":
            m = row["metrics"]
            rate = m.get("acceptance_rate")
            self.progress.console.print(f"[green]✓[/] {where}: {m['output_throughput']:.1f} tok/s"
                                        + (f", acceptance {rate:.1%}" if rate is not None else ""), highlight=False)
        else:
            error = row["error"]
            known = f" [{error['known_failure']}]" if error["known_failure"] else ""
            self.progress.console.print(Text.assemble(("✗", "bold red"), f" {where}: {error['message']}{known}"),
                                        highlight=False)


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    k: KOpt = None,
    shape: ShapeOpt = None,
    concurrency: ConcurrencyOpt = None,
    dataset: DatasetOpt = "random",
    weights: WeightsOpt = None,
    apply_best: ApplyOpt = False,
    workdir: WorkdirOpt = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run the benchmark matrix (the bench step) and report it; the server is put back as it was."""
    if ctx.invoked_subcommand is not None:
        return
    from dsv4setup.bench.best import parse_weights
    from dsv4setup.bench.matrix import plan_matrix
    from dsv4setup.bench.report import read_run_document
    from dsv4setup.bench.runner import NoProgress, new_run_id
    from dsv4setup.engine import Selection
    from dsv4setup.runbook import RunbookRequest, build_runbook

    wd = workdir_from(workdir)
    runbook, resolved = build_runbook(RunbookRequest(wd, profile, set_ or [], with_bench=True))
    plan = plan_matrix(resolved.profile, k, shape, concurrency, dataset)  # bad input: exit 2 before anything
    parse_weights(weights, plan.categories)
    run_id = new_run_id()
    display = NoProgress() if json_ else BarDisplay(err)  # --json: nothing on the terminal
    runbook.options.update({"bench_k": k, "bench_shape": shape, "bench_concurrency": concurrency,
                            "bench_dataset": dataset, "bench_weights": weights,
                            "apply_best": apply_best, "bench_run_id": run_id, "bench_display": display,
                            "bench_source_file": resolved.source_file})
    with display:
        result = runbook.up(Selection(only=("bench",), redo=("bench",)))
    doc = read_run_document(wd.bench_dir, run_id)
    if doc is None:  # it failed before measuring anything (no vLLM, lock, needs)
        error = result.error
        raise DsvError(error.message if error else "the bench wrote no result", fix=error.fix if error else None)
    emit(doc, json_, _print_run)
    if not result.ok:
        if not json_ and result.error:
            err.print(f"[bold red]error:[/] {result.error.message}", highlight=False)
            if result.error.fix:
                err.print(f"[bold]fix:[/] {result.error.fix}", highlight=False)
        raise typer.Exit(EXIT_FAILED)


def _tables() -> Console:
    """stdout for tables; written to a file or pipe they keep their columns (rich would assume 80)."""
    return out if out.is_terminal else Console(file=out.file, width=max(out.width, TABLE_WIDTH), highlight=False)


def _print_run(doc: Document) -> None:
    from dsv4setup.bench.report import fmt, fmt_positions, fmt_rate

    shapes = {s["name"]: s for s in doc["matrix"]["shapes"]}
    for name, shape in shapes.items():
        dataset = doc["matrix"]["dataset"]
        prompts = (f"{shape['input_len']} in / {shape['output_len']} out, {shape['num_prompts']} prompts"
                   if dataset["name"] == "random" else
                   f"dataset {dataset['name']}, {dataset['num_prompts']} prompts, {shape['output_len']} out")
        table = Table(title=f"{doc['profile']}, shape {name}: {prompts} (run {doc['run_id']})", title_justify="left",
                      box=box.SIMPLE_HEAD)
        categories = dataset["name"] != "random"
        for col in ("c", *(["category"] if categories else []), "k", "tok/s", "vs k=0", "TPOT ms", "p99 TPOT",
                    "TTFT ms", "accept", "length", "per position", "status"):
            table.add_column(col, justify="left" if col in ("category", "per position", "status") else "right")
        for line in (x for x in doc["summary"] if x["shape"] == name):
            status = "[green]ok[/]" if line["status"] == "ok" else f"[bold red]failed[/] {line['known_failure'] or ''}"
            table.add_row(str(line["concurrency"]), *([line["category"]] if categories else []),
                          str(line["k"]), fmt(line["output_throughput"]),
                          f"{line['speedup']:.2f}x" if line["speedup"] else "-", fmt(line["mean_tpot_ms"], ".2f"),
                          fmt(line["p99_tpot_ms"], ".2f"), fmt(line["mean_ttft_ms"], ".1f"),
                          fmt_rate(line["acceptance_rate"]), fmt(line["acceptance_length"], ".2f"),
                          fmt_positions(line["per_position_acceptance"]), status)
        _tables().print(table)
    for k_value, total in doc["lossless"]["by_k"].items():
        out.print(f"lossless k={k_value}: {total['identical']}/{total['total']} prompts gave the same greedy text "
                  "as k=0", highlight=False)
    for shape, best in doc["best"].items():
        out.print(f"best k for {shape}: [bold]{best['k']}[/] ({best['output_throughput']} tok/s)", highlight=False)
        if best["other_k"]:
            out.print("  categories that would have picked another k: " + ", ".join(
                f"{category} (k={k})" for category, k in best["other_k"].items()), highlight=False)
    applied = doc["applied"]
    if applied:
        was = "unchanged" if applied["k"] == applied["previous_k"] else f"was {applied['previous_k']}"
        out.print(f"applied: spec.num_speculative_tokens = {applied['k']} ({was}) in {applied['file']}; "
                  "the next `dsv4setup up` serves it", highlight=False)
    restore = doc["restore"]
    out.print(f"server: {restore['message']}" + (f"; smoke test {restore['smoke']}"
                                                 if restore["smoke"] != "not run" else ""), highlight=False)
    files = doc["files"]
    out.print(f"report: {files['markdown']}; chart: {files['chart']}; rows: {files['results']}", highlight=False)


@bench_app.command("report")
def report_cmd(
    share: Annotated[bool, typer.Option(
        "--share", help="Print a Markdown summary to post (hardware, profile, vLLM and patches, prompts, acceptance "
                        "per category and k, lossless), scrubbed of host names, paths, keys and tokens.")] = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Print the last bench run's report (<workdir>/bench/report.md), or with --share a summary to post."""
    from dsv4setup.bench.share import report_text

    typer.echo(report_text(workdir_from(workdir), share), nl=False)


@bench_app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="results.jsonl of machine A.", show_default=False)],
    b: Annotated[Path, typer.Argument(help="results.jsonl of machine B.", show_default=False)],
    allow_different_prompts: Annotated[bool, typer.Option(
        "--allow-different-prompts", help="Line up cells measured on different prompt sets (flagged as differing) "
                                          "instead of refusing.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Line up two machines' matrices by (shape, concurrency, k); flag cells measured with different setups."""
    from dsv4setup.bench.compare import compare
    from dsv4setup.bench.rows import read_rows

    emit(compare(read_rows(a), read_rows(b), a, b, allow_different_prompts=allow_different_prompts), json_,
         _print_compare)


def _print_compare(doc: Document) -> None:
    from dsv4setup.bench.report import fmt_rate

    table = Table(title=f"A: {doc['a']}\nB: {doc['b']}", title_justify="left")
    for col in ("shape", "c", "category", "k", "A tok/s", "B tok/s", "B/A", "A acc.", "B acc.", "setup"):
        table.add_column(col, justify="left" if col in ("shape", "category", "setup") else "right")
    for cell in doc["cells"]:
        a, b = cell["a"] or {}, cell["b"] or {}
        if not cell["a"] or not cell["b"]:
            setup = "[dim]only in " + ("B" if not cell["a"] else "A") + "[/]"
        elif cell["matched"]:
            setup = "[green]matched[/]"
        else:
            setup = "[bold red]differs:[/] " + ", ".join(d["key"] for d in cell["differences"][:3]) + (
                " …" if len(cell["differences"]) > 3 else "")
        table.add_row(cell["shape"], str(cell["concurrency"]), cell["category"] or "-", str(cell["k"]), _tps(a),
                      _tps(b),
                      f"{cell['ratio']:.2f}" if cell["ratio"] else "-", fmt_rate(a.get("acceptance_rate")),
                      fmt_rate(b.get("acceptance_rate")), setup)
    _tables().print(table)
    counts = doc["counts"]
    out.print(f"{counts['matched']} of {counts['cells']} cells matched, {counts['mismatched']} measured with "
              f"different setups, {counts['only_a']} only in A, {counts['only_b']} only in B", highlight=False)
    if doc["differing_keys"]:
        first = next(c for c in doc["cells"] if c["differences"])
        for d in first["differences"]:
            out.print(f"  {d['key']}: A={d['a']!r} B={d['b']!r}", highlight=False, markup=False)


def _tps(side: dict[str, Any]) -> str:
    if not side:
        return "-"
    if side["status"] != "ok":
        return f"failed {side.get('known_failure') or ''}".strip()
    return f"{side['output_throughput']:.1f}"
