"""Offline data loaders for the bh-routing lm-eval tasks (referenced by ``!function`` in the YAMLs).

Each reads a JSONL file next to this module, so the tasks work from any working directory and
without network access. lm-eval calls them with the task's metadata as keyword arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _jsonl(name: str) -> list[dict]:
    with open(_HERE / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _dataset(rows: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def python_mc(**_metadata):
    """``bhr_python_mc``: question, 4 choices, index of the right answer."""
    return _dataset(_jsonl("bhr_python_mc.jsonl"))


def heldout_passages(**_metadata):
    """``bhr_heldout_rolling``: held-out passages (``text``) with their ``domain``."""
    return _dataset(_jsonl("bhr_heldout_rolling.jsonl"))
