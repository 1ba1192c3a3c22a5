"""Texts the analyses run on: default prompts, evaluation chunks, the user's prompt files."""

from __future__ import annotations

from pathlib import Path

import torch

# The original notebook's three baseline prompts: simple / medium / complex.
BASELINE_PROMPTS: dict[str, str] = {
    "simple": "The capital of France is",
    "medium": "The function returns a list of the keys of the dictionary, sorted",
    "complex": "To avoid a race condition when two threads update the same counter, the module",
}

# Ten prompts across domains for the comparative analysis (label -> prompt).
DEFAULT_PROMPTS: dict[str, str] = {
    "facts": "Paris is the capital of France, and Berlin is the capital of Germany.",
    "prose": "She opened the window and the cold morning air filled the quiet room.",
    "docs": "This module provides functions for working with paths in a portable way.",
    "code-def": "def read_config(path):\n    with open(path) as f:\n        return json.load(f)",
    "code-class": "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):",
    "maths": "If x + 3 = 7, then x = 4, and 2 * x + 1 = 9.",
    "dialogue": "A: Did you run the tests?\nB: Yes, all of them pass now.\nA: Great, thanks!",
    "list": "Steps: 1. install the package; 2. run the tests; 3. read the report.",
    "error": "Traceback (most recent call last):\n  File \"main.py\", line 3, in <module>\nValueError: bad value",
    "numbers": "The values were 3.14, 2.71, 1.41 and 42, measured on 2024-05-01.",
}

# The sentence of the token-level analysis: words, code, digits and punctuation.
TOKEN_SENTENCE = "The function sorted(items, key=len) returns a new list of 3 items, in order."


def read_prompts(path: str | Path) -> dict[str, str]:
    """Prompts from a text file, one per line (blank lines skipped): {"prompt-1": text, ...}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise ValueError(f"prompts file is empty: {path}")
    return {f"prompt-{i + 1}": p for i, p in enumerate(prompts)}


def chunk_text(tokenizer, text: str, *, seq_len: int, max_sequences: int | None = None) -> torch.Tensor:
    """Tokenise ``text`` and cut it into non-overlapping sequences of ``seq_len`` tokens.

    Returns a LongTensor (N, seq_len); the tail shorter than ``seq_len`` is dropped.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # long text: no length warning
    n = len(ids) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise ValueError(f"text too short: {len(ids)} tokens, need at least seq_len={seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)  # (N, S)


def interleave_domains(chunks: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """Alternate sequences of several domains: (N, S) and each sequence's domain name."""
    out, names = [], []
    longest = max(len(c) for c in chunks.values())
    for i in range(longest):
        for name, c in chunks.items():
            if i < len(c):
                out.append(c[i])
                names.append(name)
    return torch.stack(out), names
