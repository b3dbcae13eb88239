"""Prompt sets for `bench --dataset`: each format read from a file in its real upstream shape, converted to
vLLM's `custom` dataset, checked against the context, named and hashed in the fingerprint; and the shipped mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsv4setup.bench.client import BenchTarget, bench_flags
from dsv4setup.bench.compare import compare
from dsv4setup.bench.datasets import MIX_FILE, load_dataset, parse_prompts, read_prompt_file
from dsv4setup.bench.fingerprint import workload_part
from dsv4setup.bench.matrix import Cell, plan_matrix
from dsv4setup.bench.rows import upgrade_row
from dsv4setup.core.errors import UsageError
from dsv4setup.core.jsonschemas import validate_document
from dsv4setup.profiles.loader import find_profile_file, load_named_file
from dsv4setup.profiles.model import Profile

from .conftest import changed, load_rows

SPEC_BENCH_CATEGORIES = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
                         "translation", "summarization", "qa", "math_reasoning", "rag"}

# SpecBench's data/spec_bench/question.jsonl: MT-bench lines carry two turns, the others one
SPEC_BENCH_LINES = [
    {"question_id": 81, "category": "writing",
     "turns": ["Compose an engaging travel blog post about a recent trip to Hawaii.",
               "Rewrite your previous response. Start every sentence with the letter A."]},
    {"question_id": 111, "category": "math", "turns": ["The vertices of a triangle are at points (0, 0), (-1, 1), "
                                                       "and (3, 3). What is the area of the triangle?"]},
    {"question_id": 161, "category": "translation", "turns": ["Translate German to English: Guten Morgen."]},
]
# ShareGPT_V3_unfiltered_cleaned_split.json: a list of conversations, `from` human/gpt
SHAREGPT = [
    {"id": "QWJhYvA_0", "conversations": [
        {"from": "human", "value": "Summarize the main ideas of Jeff Walker's Product Launch Formula."},
        {"from": "gpt", "value": "Here are the main ideas..."},
        {"from": "human", "value": "Summarize it in two sentences."},
        {"from": "gpt", "value": "..."}]},
    {"id": "i6IyJda_0", "conversations": [
        {"from": "human", "value": "How to tell if a customer segment is well segmented? In 3 bullet points."},
        {"from": "gpt", "value": "1. Homogeneity..."}]},
]


def shipped(name: str) -> Profile:
    return load_named_file(find_profile_file(name))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_spec_bench_question_jsonl_sends_every_first_turn_and_counts_the_later_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "question.jsonl", "".join(json.dumps(line) + "\n" for line in SPEC_BENCH_LINES))
    prompts = read_prompt_file(path)
    assert prompts.format == "spec_bench" and prompts.name == "question.jsonl"
    assert [p.category for p in prompts.prompts] == ["writing", "math", "translation"]
    assert prompts.prompts[0].text.startswith("Compose an engaging travel blog") and prompts.turns_not_sent == 1
    custom = [json.loads(line) for line in prompts.custom_jsonl().splitlines()]  # vLLM's custom dataset
    assert custom == [{"prompt": line["turns"][0]} for line in SPEC_BENCH_LINES]


def test_sharegpt_json_sends_the_first_human_turn_of_each_conversation(tmp_path: Path) -> None:
    prompts = read_prompt_file(write(tmp_path, "sharegpt.json", json.dumps(SHAREGPT, indent=2)))
    assert prompts.format == "sharegpt" and prompts.turns_not_sent == 1
    assert [p.text for p in prompts.prompts] == [SHAREGPT[0]["conversations"][0]["value"],
                                                 SHAREGPT[1]["conversations"][0]["value"]]
    assert {p.category for p in prompts.prompts} == {"all"} and prompts.prompts[1].where == "sharegpt.json[1]"


def test_jsonl_with_and_without_categories_and_the_hash_is_the_prompts_not_the_format(tmp_path: Path) -> None:
    lines = [{"prompt": "def add(a, b):", "category": "code"}, {"prompt": "Hello!", "category": "chat"}]
    plain = read_prompt_file(write(tmp_path, "p.jsonl", "".join(json.dumps(x) + "\n" for x in lines) + "\n"))
    assert plain.format == "jsonl" and plain.categories() == {"code": 1, "chat": 1}
    as_spec = parse_prompts("".join(json.dumps({"question_id": i, "category": x["category"], "turns": [x["prompt"]]})
                                    + "\n" for i, x in enumerate(lines)), "other.jsonl")
    assert as_spec.format == "spec_bench" and as_spec.sha256 == plain.sha256  # same prompts, same hash
    recategorised = parse_prompts("".join(json.dumps({"prompt": x["prompt"]}) + "\n" for x in lines), "p.jsonl")
    assert recategorised.categories() == {"all": 2} and recategorised.sha256 != plain.sha256


@pytest.mark.parametrize(("text", "said"), [
    ("just some text\n", "not ShareGPT JSON, SpecBench question.jsonl or JSONL"),
    ('{"question": "no prompt field"}\n', "bad.txt:1: an object with keys ['question']"),
    ('{"prompt": "ok"}\n{"text": "no prompt"}\n', "bad.txt:2: an object with keys ['text']"),
    ('{"prompt": ""}\n', "bad.txt:1: `prompt` is not a non-empty string"),
    ('{"prompt": "x", "category": "../etc"}\n', "category '../etc' is not a name"),
    ('[{"conversations": [{"from": "gpt", "value": "hi"}]}]', "bad.txt[0]: the conversation has no turn from"),
    ('{"question_id": 1, "category": "qa", "turns": []}\n', "bad.txt:1: `turns` is not a non-empty list"),
    ("", "holds no prompts"),
])
def test_a_file_in_none_of_the_formats_is_refused_with_where_and_how(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(UsageError) as caught:
        read_prompt_file(write(tmp_path, "bad.txt", text))
    assert said in caught.value.message and caught.value.fix


def test_prompts_too_long_for_the_context_are_refused_not_dropped(tmp_path: Path) -> None:
    long = "word " * 60  # 300 bytes: more than cpu-tiny's 256 - 32 tokens may hold
    path = write(tmp_path, "p.jsonl", json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": long}) + "\n")
    with pytest.raises(UsageError) as caught:
        plan_matrix(shipped("cpu-tiny"), dataset=str(path))
    assert "1 prompt(s) may not fit serve.max_model_len 256 with 32 output tokens" in caught.value.message
    assert "p.jsonl:2 (300 bytes)" in caught.value.message and "max_model_len" in (caught.value.fix or "")
    with pytest.raises(UsageError, match="no such file"):
        plan_matrix(shipped("cpu-tiny"), dataset=str(tmp_path / "missing.jsonl"))


def test_the_shipped_mix_is_ours_in_spec_bench_shape_with_a_part_that_fits_cpu_tiny() -> None:
    lines = [json.loads(line) for line in MIX_FILE.read_text(encoding="utf-8").splitlines()]
    assert 60 <= len(lines) <= 100 and all(set(x) == {"question_id", "category", "turns"} for x in lines)
    assert len({x["question_id"] for x in lines}) == len(lines)
    categories = {x["category"] for x in lines}
    assert categories <= SPEC_BENCH_CATEGORIES and len(categories) >= 8
    assert max(len(x["turns"][0]) for x in lines if x["category"] == "summarization") > 1000  # a long document
    assert sum('{"tool"' in x["turns"][0] for x in lines) >= 2 and any("JSON" in x["turns"][0] for x in lines)
    tiny = plan_matrix(shipped("cpu-tiny"), dataset="mix").prompts
    assert tiny is not None and tiny.name == "mix" and tiny.format == "spec_bench"
    assert 40 <= len(tiny.prompts) < len(lines) and tiny.left_out == len(lines) - len(tiny.prompts)
    assert len(tiny.categories()) >= 8 and all(p.max_tokens <= 256 - 32 for p in tiny.prompts)
    whole = load_dataset("mix", None, 32)
    assert whole is not None and len(whole.prompts) == len(lines) and whole.left_out == 0
    assert whole.sha256 != tiny.sha256  # another subset, another fingerprint


def test_the_dataset_goes_into_the_flags_the_fingerprint_and_the_matrix(tmp_path: Path) -> None:
    plan = plan_matrix(shipped("cpu-tiny"), ks="0,1", dataset="mix")
    assert plan.prompts is not None
    shape = plan.shapes[0]
    target = BenchTarget("http://127.0.0.1:8011", "tiny-mtp", "/wd/models/x")
    coding = plan.prompts.only("coding")
    prompts_file = coding.write_custom(tmp_path / "prompts-coding.jsonl")
    cell = Cell(1, shape, 1, "coding")
    flags = bench_flags(cell, target, 0, tmp_path, "r.json", "r1", prompts_file, plan.num_prompts(cell))
    pairs = dict(zip(flags, [*flags[1:], None], strict=True))
    assert pairs["--dataset-name"] == "custom" and pairs["--dataset-path"] == str(prompts_file)
    assert pairs["--custom-output-len"] == "32" and pairs["--num-prompts"] == str(len(coding.prompts)) == "8"
    assert "--skip-chat-template" in flags and "--disable-shuffle" in flags and "--random-input-len" not in flags
    assert [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()] == [
        p.text for p in plan.prompts.prompts if p.category == "coding"]
    cells = plan.cells(1)  # each category its own cell, one after another against the server of this k
    assert [c.category for c in cells] == list(plan.prompts.categories()) and plan.size == 2 * len(cells)
    workload = workload_part(shape, plan.seed, plan.prompts)
    assert workload["dataset"] == "mix" and workload["dataset_sha256"] == plan.prompts.sha256
    assert workload["input_len"] is None and workload["num_prompts"] == len(plan.prompts.prompts)
    assert plan.to_dict()["dataset"]["categories"] == plan.prompts.categories()
    assert plan_matrix(shipped("cpu-tiny")).to_dict()["dataset"] == {"name": "random"}


def test_rows_of_earlier_releases_read_as_random_prompts_and_validate() -> None:
    for row in load_rows("cpu-tiny-results.jsonl"):  # bench-row/1, upgraded
        assert row["schema"] == "dsv4setup.bench-row/3" and row["fingerprint"]["workload"]["dataset_sha256"] is None
        validate_document(row)
        v2 = {**row, "schema": "dsv4setup.bench-row/2",
              "fingerprint": {**row["fingerprint"], "workload": {
                  k: v for k, v in row["fingerprint"]["workload"].items() if k != "dataset_sha256"}}}
        assert upgrade_row(v2) == row


def test_compare_refuses_rows_on_different_prompts_unless_asked(tmp_path: Path) -> None:
    rows = load_rows("cpu-tiny-results.jsonl")
    mixed = [changed(changed(r, "workload.dataset", "mix"), "workload.dataset_sha256", "a" * 64) for r in rows]
    with pytest.raises(UsageError) as caught:
        compare(rows, mixed, tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert "on different prompts: A random, B mix (sha256 aaaaaaaaaaaa)" in caught.value.message
    assert "--allow-different-prompts" in (caught.value.fix or "")
    doc = compare(rows, mixed, tmp_path / "a.jsonl", tmp_path / "b.jsonl", allow_different_prompts=True)
    assert doc["differing_keys"] == ["workload.dataset", "workload.dataset_sha256"] and doc["counts"]["matched"] == 0
