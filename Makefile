# The two commands of the README. Both set everything up first (scripts/setup.sh, idempotent).
.PHONY: setup setup-vllm run test docs docs-build
OUT ?= runs/default

setup:
	bash scripts/setup.sh

# vLLM (CPU build) in the same .venv: bh_routing.vllm and its tests (tests/serving) use it
setup-vllm:
	bash scripts/setup_vllm.sh

run: setup
	.venv/bin/bh-routing run --out $(OUT)

test: setup
	.venv/bin/python -m pytest -n 2 -q --durations=20

# the docs site (MkDocs + Material + mkdocstrings; its tools come with the test extra): served on
# http://127.0.0.1:8000 with live reload; docs-build writes site/ with warnings as errors, as the tests do
docs: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs serve

docs-build: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict
