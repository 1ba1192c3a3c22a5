# The two commands of the README. Both set everything up first (scripts/setup.sh, idempotent).
.PHONY: setup setup-vllm run test
OUT ?= runs/default

setup:
	bash scripts/setup.sh

# vLLM (CPU build) in the same .venv: bh_routing.vllm and its tests (tests/serving) use it
setup-vllm:
	bash scripts/setup_vllm.sh

run: setup
	.venv/bin/bh-routing run --out $(OUT)

test: setup
	.venv/bin/python -m pytest -n 2 -q
