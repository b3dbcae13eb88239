"""A stand-in `vllm` package for the fast bench tests: installed into a real venv as the serving vLLM.

It plays only what dsv4setup starts from the serving venv: the OpenAI server module and the
`vllm bench serve` subcommand class (run by dsv4setup's real launcher). Behaviour per k comes
from the environment: STANDIN_CRASH_K (the server prints a known failure signature at
startup and exits), STANDIN_DIE_K (it prints one and dies during the benchmark).
The e2e test runs the real vLLM.
"""
