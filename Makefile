# The two commands of the README. Both set everything up first (scripts/setup.sh, idempotent).
.PHONY: setup run test
OUT ?= runs/default

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/bh-routing run --out $(OUT)

test: setup
	.venv/bin/python -m pytest -n 2 -q
