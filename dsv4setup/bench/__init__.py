"""`dsv4setup bench`: the matched MTP benchmark matrix, a chosen k, and a report people can read.

For each k the server is (re)started from the plan with that num_speculative_tokens, and
vLLM's own `vllm bench serve` measures it (random dataset or a prompt set, fixed lengths and
seed, --ignore-eos). Every result row carries a fingerprint of what ran (vLLM, patches,
checkpoint, profile and overrides, hardware, driver, date), so matrices from two machines
can be lined up and their differences named.

- matrix.py: which k, shapes and concurrency levels, in which order, with which seed and prompts
- datasets.py: prompt sets (`--dataset mix|FILE`): read, checked against the context, converted
- client.py: the `vllm bench serve` command line, running it, reading its result JSON
- launcher.py: runs inside the serving venv when vLLM's CLI cannot start there by itself
- fingerprint.py: what a row was measured with
- rows.py: result rows, results.jsonl, JSON Schema validation
- runner.py: the matrix on the machine: server per k, failures recorded, server restored
- best.py: the winning k, and writing it into the workdir overrides
- report.py: summary, Markdown report, PNG chart, the bench document
- compare.py: two machines' matrices side by side
- lossless.py: greedy texts with k>0 against k=0, prompt by prompt
- reference.py: the k=0 texts a run on a prompt set keeps for `smoke --lossless`, with their fingerprint
- execute.py: one run from matrix to report (what the bench step and `dsv4setup bench` call)

Files in <workdir>/bench/: results.jsonl (every row of every run), report.md, chart.png and
last-run.json (the latest run), raw/<run_id>/ (vLLM's own result JSON per cell), lossless-reference.json.
"""

ROW_SCHEMA = "dsv4setup.bench-row/3"
ROW_SCHEMA_V2 = "dsv4setup.bench-row/2"  # random prompts only: no `workload.dataset_sha256` (read, upgraded)
ROW_SCHEMA_V1 = "dsv4setup.bench-row/1"  # first release: `failure.hint` (read, upgraded)
BENCH_SCHEMA = "dsv4setup.bench/3"
COMPARE_SCHEMA = "dsv4setup.bench-compare/2"
