"""Which cells the bench measures: k values x shapes x concurrency levels, and in which order.

A matrix is planned from the profile's `bench` section, narrowed by the command line
(`--k 0,1,2 --shape short --concurrency 1,4`), and checked before any server is touched:
an unknown shape or a shape longer than serve.max_model_len is a usage error, not a failed row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dsv4setup.bench.datasets import MIX, RANDOM, PromptSet, load_dataset
from dsv4setup.core.errors import UsageError
from dsv4setup.profiles.model import Profile

TEMPERATURE = 0.0  # greedy: the same prompts give the same tokens on every machine (matched runs)


@dataclass(frozen=True)
class Shape:
    name: str
    input_len: int
    output_len: int
    num_prompts: int

    @property
    def label(self) -> str:
        return f"{self.name} ({self.input_len} in / {self.output_len} out, {self.num_prompts} prompts)"


@dataclass(frozen=True)
class Cell:
    k: int
    shape: Shape
    concurrency: int
    category: str | None = None  # a prompt set's category, measured on its own; None: random prompts

    @property
    def label(self) -> str:
        return f"k={self.k} {self.shape.name} c={self.concurrency}" + (f" {self.category}" if self.category else "")

    @property
    def key(self) -> tuple[int, str, int, str | None]:
        return self.k, self.shape.name, self.concurrency, self.category


@dataclass(frozen=True)
class MatrixPlan:
    ks: tuple[int, ...]
    shapes: tuple[Shape, ...]
    concurrency: tuple[int, ...]
    seed: int
    prompts: PromptSet | None = None  # None: vLLM's random dataset with the shapes' lengths
    dataset_source: str | None = None  # `mix` or the prompt file's absolute path (to load the prompts again)

    @property
    def dataset(self) -> str:
        return self.prompts.name if self.prompts else RANDOM

    def num_prompts(self, cell: Cell) -> int:
        """Requests per cell: every prompt of its category once, else the shape's count."""
        if self.prompts is None or cell.category is None:
            return cell.shape.num_prompts
        return self.prompts.categories()[cell.category]

    @property
    def categories(self) -> list[str | None]:
        """A prompt set's categories in file order, each measured on its own; [None] for random prompts."""
        return list(self.prompts.categories()) if self.prompts else [None]

    def cells(self, k: int) -> list[Cell]:
        """The cells measured against one server (one k), shapes first, then concurrency, then category."""
        return [Cell(k, shape, c, cat) for shape in self.shapes for c in self.concurrency for cat in self.categories]

    @property
    def size(self) -> int:
        return len(self.ks) * len(self.shapes) * len(self.concurrency) * len(self.categories)

    def to_dict(self) -> dict[str, Any]:
        return {"k": list(self.ks), "shapes": [asdict(s) for s in self.shapes],
                "concurrency": list(self.concurrency), "seed": self.seed,
                "dataset": self.prompts.to_dict() if self.prompts else {"name": RANDOM}}


def parse_int_list(text: str, flag: str, minimum: int, maximum: int | None = None) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2): duplicates dropped, order kept; anything else is a usage error."""
    values: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = int(part)
        except ValueError:
            raise UsageError(f"{flag} {text!r}: {part!r} is not a whole number",
                             fix=f"give a comma-separated list, e.g. {flag} 0,1,2") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise UsageError(f"{flag} {text!r}: {value} is out of range ({bounds})")
        if value not in values:
            values.append(value)
    return tuple(values)


def plan_matrix(profile: Profile, ks: str | None = None, shapes: str | None = None,
                concurrency: str | None = None, dataset: str | None = None) -> MatrixPlan:
    """The matrix for this profile; None keeps the profile's bench setting (and vLLM's random dataset).

    With a prompt set the shapes give the output length only; its prompts must fit the context
    with the longest output of the chosen shapes (see datasets.py).
    """
    bench = profile.bench
    k_values = parse_int_list(ks, "--k", 0, 8) if ks else tuple(dict.fromkeys(bench.k_values))
    levels = parse_int_list(concurrency, "--concurrency", 1) if concurrency else tuple(
        dict.fromkeys(bench.concurrency))
    names = [n.strip() for n in (shapes or bench.default_shape).split(",") if n.strip()]
    chosen: list[Shape] = []
    for name in dict.fromkeys(names):
        if name not in bench.shapes:
            raise UsageError(f"--shape {name}: profile {profile.name} has no such bench shape "
                             f"(it has: {', '.join(bench.shapes) or 'none'})",
                             fix="add it to the profile's bench.shapes, e.g. --set "
                                  f"bench.shapes.{name}.input_len=8192 --set bench.shapes.{name}.output_len=1024")
        spec = bench.shapes[name]
        chosen.append(Shape(name, spec.input_len, spec.output_len, spec.num_prompts))
    if not k_values or not levels or not chosen:
        raise UsageError("the bench matrix is empty: give at least one k, one shape and one concurrency level")
    if dataset is None or dataset == RANDOM:
        _check_fits(profile, chosen)
        return MatrixPlan(k_values, tuple(chosen), levels, bench.seed)
    prompts = load_dataset(dataset, profile.serve.max_model_len, max(s.output_len for s in chosen))
    source = dataset if dataset == MIX else str(Path(dataset).expanduser().absolute())
    return MatrixPlan(k_values, tuple(chosen), levels, bench.seed, prompts, source)


def _check_fits(profile: Profile, shapes: list[Shape]) -> None:
    limit = profile.serve.max_model_len
    if limit is None:
        return
    for shape in shapes:
        need = shape.input_len + shape.output_len
        if need > limit:
            raise UsageError(f"shape {shape.name} needs {need} tokens per request ({shape.input_len} in + "
                             f"{shape.output_len} out) but serve.max_model_len is {limit}",
                             fix="choose a shorter shape, or serve a longer context: "
                                  f"--set serve.max_model_len={need}")


def execution_order(ks: tuple[int, ...], configured_k: int, configured_running: bool) -> list[int]:
    """The k values in the order that restarts the server least.

    The server ends the bench at the configured k (restored for `up`). When it already runs
    that k, it is measured first, without a restart; otherwise it is measured last and stays.
    """
    others = [k for k in ks if k != configured_k]
    if configured_k not in ks:
        return others
    return [configured_k, *others] if configured_running else [*others, configured_k]
