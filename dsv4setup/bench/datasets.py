"""Prompt sets for `bench --dataset random|mix|FILE`: read, checked, and converted to vLLM's `custom` dataset.

A FILE is one of three shapes, told apart by its content (never by its name):
- JSONL: one object per line with `prompt` (and an optional `category`);
- ShareGPT JSON: a list of objects with `conversations`, each a list of `{"from", "value"}`;
- SpecBench's `question.jsonl`: one object per line with `question_id`, `category` and `turns`.

Whatever the shape, the prompts are sent through vLLM's `custom` dataset (a `.jsonl` of `prompt`s,
no chat template, no shuffle) so that none vanishes on the way: vLLM's ShareGPT loader silently
drops prompts over 1024 tokens, and its spec_bench loader always applies the chat template and
sends only the first turn. Multi-turn conversations send their first user turn (the later turns
answer a model reply that does not exist yet); how many turns were left out is recorded.

Lengths are checked before any server starts: a prompt that may not fit the profile's
serve.max_model_len with the shape's output is refused (FILE) or left out (the shipped mix, which
is written to have a subset for cpu-tiny's 256 tokens). The check counts UTF-8 bytes: a byte-level
BPE token covers at least one byte, so bytes plus the special tokens bound the token count from above.

`mix` is our own prompt set (dsv4setup/bench/prompts/mix.jsonl, SpecBench's shape). The name and
the sha256 of the converted prompts go into every row's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4setup.core.errors import UsageError
from dsv4setup.core.resources import package_file

RANDOM = "random"
MIX = "mix"
MIX_FILE = package_file("bench", "prompts", "mix.jsonl")
DEFAULT_CATEGORY = "all"
SPECIAL_TOKENS = 2  # BOS and one more, room for a tokenizer that adds two special tokens
CATEGORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # category names become file names
FORMATS_FIX = ("give JSONL with a `prompt` per line (optional `category`), ShareGPT JSON (a list of objects with "
               "`conversations`: [{\"from\": \"human\", \"value\": ...}, ...]), or SpecBench's question.jsonl "
               "(`question_id`, `category`, `turns`)")


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str
    where: str  # file:line or file[index], for messages

    @property
    def max_tokens(self) -> int:
        """An upper bound of its token count for byte-level BPE tokenizers (see the module docstring)."""
        return len(self.text.encode("utf-8")) + SPECIAL_TOKENS


@dataclass(frozen=True)
class PromptSet:
    name: str  # "mix", or the file's name
    format: str  # spec_bench | sharegpt | jsonl
    prompts: tuple[Prompt, ...]
    turns_not_sent: int = 0  # later turns of multi-turn conversations (only the first user turn is sent)
    left_out: int = 0  # prompts of the shipped mix longer than this profile's context allows

    def categories(self) -> dict[str, int]:
        return dict(Counter(p.category for p in self.prompts))

    def only(self, category: str) -> PromptSet:
        """The prompts of one category (measured on their own: acceptance per category)."""
        return PromptSet(self.name, self.format, tuple(p for p in self.prompts if p.category == category))

    def custom_jsonl(self) -> str:
        """vLLM's `custom` dataset: one `{"prompt": ...}` per line, in order."""
        return "".join(json.dumps({"prompt": p.text}, ensure_ascii=False) + "\n" for p in self.prompts)

    @property
    def sha256(self) -> str:
        """What was sent: the converted prompts with their categories (the file's own shape does not matter)."""
        body = "".join(json.dumps([p.category, p.text], ensure_ascii=False) + "\n" for p in self.prompts)
        return hashlib.sha256(body.encode("utf-8")).hexdigest()

    def write_custom(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.custom_jsonl(), encoding="utf-8")
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "sha256": self.sha256, "num_prompts": len(self.prompts),
                "categories": self.categories(), "turns_not_sent": self.turns_not_sent, "left_out": self.left_out}


def _bad(where: str, what: str) -> UsageError:
    return UsageError(f"--dataset {where}: {what}", fix=FORMATS_FIX)


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(where, f"`{field}` is not a non-empty string")
    return value


def _category(value: Any, where: str) -> str:
    if value is None:
        return DEFAULT_CATEGORY
    if not isinstance(value, str) or not CATEGORY_RE.match(value):
        raise _bad(where, f"category {value!r} is not a name of letters, digits, '.', '_' or '-' (at most 64)")
    return value


def _json_lines(text: str, name: str) -> list[tuple[str, dict[str, Any]]] | None:
    """(file:line, object) per non-empty line, or None when some line is not a JSON object."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        found.append((f"{name}:{number}", obj))
    return found


def _spec_bench(lines: list[tuple[str, dict[str, Any]]], name: str) -> PromptSet:
    prompts, later = [], 0
    for where, obj in lines:
        turns = obj.get("turns")
        if not isinstance(turns, list) or not turns:
            raise _bad(where, "`turns` is not a non-empty list")
        prompts.append(Prompt(_text(turns[0], where, "turns[0]"), _category(obj.get("category"), where), where))
        later += len(turns) - 1
    return PromptSet(name, "spec_bench", tuple(prompts), turns_not_sent=later)


def _plain_jsonl(lines: list[tuple[str, dict[str, Any]]], name: str) -> PromptSet:
    return PromptSet(name, "jsonl", tuple(Prompt(_text(obj.get("prompt"), where, "prompt"),
                                                 _category(obj.get("category"), where), where)
                                          for where, obj in lines))


def _sharegpt(items: list[Any], name: str) -> PromptSet:
    prompts, later = [], 0
    for index, item in enumerate(items):
        where = f"{name}[{index}]"
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise _bad(where, "`conversations` is not a list of {\"from\", \"value\"} objects")
        human = [i for i, t in enumerate(turns) if t.get("from") in ("human", "user")]
        if not human:
            raise _bad(where, "the conversation has no turn from \"human\"")
        first = human[0]
        prompts.append(Prompt(_text(turns[first].get("value"), where, "value"),
                              _category(item.get("category"), where), where))
        later += len(human) - 1
    return PromptSet(name, "sharegpt", tuple(prompts), turns_not_sent=later)


def parse_prompts(text: str, name: str) -> PromptSet:
    """The prompt set in a file's text, its format told by its content; UsageError when it is none of the three."""
    if not text.strip():
        raise _bad(name, "holds no prompts")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if whole == []:
        raise _bad(name, "holds no prompts")
    if isinstance(whole, list) and whole and all(isinstance(i, dict) and "conversations" in i for i in whole):
        return _sharegpt(whole, name)
    lines = _json_lines(text, name)
    if lines and all({"question_id", "category", "turns"} <= set(obj) for _, obj in lines):
        return _spec_bench(lines, name)
    if lines and all("prompt" in obj for _, obj in lines):
        return _plain_jsonl(lines, name)
    if lines:
        where, obj = next(((w, o) for w, o in lines if "prompt" not in o), lines[0])
        raise _bad(where, f"an object with keys {sorted(obj)[:6]} is neither a `prompt` line nor a SpecBench "
                          "question (question_id, category, turns)")
    raise _bad(name, "not ShareGPT JSON, SpecBench question.jsonl or JSONL with `prompt`")


def read_prompt_file(path: Path) -> PromptSet:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--dataset {path}: no such file", fix="give random, mix, or the path of a prompt file") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--dataset {path}: cannot be read as UTF-8 text: {exc}") from None
    return parse_prompts(text, path.name)


def fit(prompts: PromptSet, budget: int, limit: int, output_len: int, *, leave_out: bool) -> PromptSet:
    """The prompts that fit `budget` tokens of input; the rest left out (the mix) or refused (a user's file)."""
    long = [p for p in prompts.prompts if p.max_tokens > budget]
    if long and not leave_out:
        named = ", ".join(f"{p.where} ({p.max_tokens - SPECIAL_TOKENS} bytes)" for p in long[:5])
        raise UsageError(f"--dataset {prompts.name}: {len(long)} prompt(s) may not fit serve.max_model_len {limit} "
                         f"with {output_len} output tokens (room for {budget} prompt tokens, counted as UTF-8 "
                         f"bytes + {SPECIAL_TOKENS}): {named}",
                         fix="shorten or remove them, or serve a longer context: --set serve.max_model_len=N")
    kept = tuple(p for p in prompts.prompts if p.max_tokens <= budget)
    if not kept:
        raise UsageError(f"--dataset {prompts.name}: no prompt fits serve.max_model_len {limit} with "
                         f"{output_len} output tokens", fix="serve a longer context: --set serve.max_model_len=N")
    return PromptSet(prompts.name, prompts.format, kept, prompts.turns_not_sent, len(prompts.prompts) - len(kept))


def load_dataset(spec: str, max_model_len: int | None, output_len: int) -> PromptSet | None:
    """`random` -> None (vLLM's random dataset); `mix` -> the shipped mix's part that fits; else the file."""
    if spec == RANDOM:
        return None
    prompts = parse_prompts(MIX_FILE.read_text(encoding="utf-8"), MIX) if spec == MIX else \
        read_prompt_file(Path(spec).expanduser())
    if max_model_len is None:
        return prompts
    return fit(prompts, max_model_len - output_len, max_model_len, output_len, leave_out=spec == MIX)
