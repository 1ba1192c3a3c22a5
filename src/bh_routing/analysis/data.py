"""Texts the analyses run on: default prompts, evaluation chunks, the user's prompt files."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------------------- documents
#: The line that separates documents in a text (the embedded corpus and ``--eval-text`` files).
DOC_SEPARATOR = "<|endoftext|>"
_SEPARATOR_LINE = re.compile(r"^" + re.escape(DOC_SEPARATOR) + r"[ \t]*$", re.MULTILINE)


def split_documents(text: str) -> list[str]:
    """The documents of ``text``: the parts between lines that hold only ``<|endoftext|>``.

    Blank parts are dropped; a text without separator lines is one document.
    """
    return [d.strip("\n") for d in _SEPARATOR_LINE.split(text) if d.strip()]


@dataclass
class Windows:
    """Token windows and the document each one comes from."""

    ids: torch.Tensor  # (N, S) token ids
    documents: list[str]  # (N,) document id per window, "domain:index" (index within the domain's text)
    domains: list[str]  # (N,) domain per window

    @property
    def num_documents(self) -> int:
        return len(set(self.documents))

    def summary(self) -> dict:
        """What a results file records: documents and windows, per domain too."""
        per_domain = {d: len({doc for doc, dom in zip(self.documents, self.domains) if dom == d})
                      for d in dict.fromkeys(self.domains)}
        return {"documents": self.num_documents, "sequences": len(self.documents), "seq_len": int(self.ids.shape[1]),
                "documents_per_domain": per_domain, "window_documents": list(self.documents)}


@dataclass
class EvalSplit:
    """Evaluation and calibration windows drawn from disjoint documents."""

    evaluation: Windows
    calibration: Windows
    unit: str  # "document", or "window" when the text has no document boundaries
    skipped_short: int  # documents shorter than seq_len tokens (not used)
    #: One row per document of the text, in text order: ``id``, ``domain``, ``split`` ("evaluation",
    #: "calibration", "unused": a calibration-side document no window was drawn from, "too-short"),
    #: ``windows`` (how many it gives to its split) and the document's entries of ``sources``.
    documents: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """``results["evaluation"]``: the evaluation set (``documents``, ``sequences``, ...), its unit, and
        the calibration set under ``calibration``."""
        return {**self.evaluation.summary(), "unit": self.unit, "documents_too_short": self.skipped_short,
                "calibration": self.calibration.summary()}


def _round_robin(docs: list[tuple[str, str, torch.Tensor]], n: int) -> Windows:
    """``n`` windows: the first window of every document, then every second one, and so on."""
    picked: list[tuple[str, str, torch.Tensor]] = []
    depth = 0
    while len(picked) < n and any(len(w) > depth for _, _, w in docs):
        for doc, dom, w in docs:
            if len(w) > depth and len(picked) < n:
                picked.append((doc, dom, w[depth]))
        depth += 1
    ids = torch.stack([w for _, _, w in picked]) if picked else torch.empty(0, 0, dtype=torch.long)  # (n, S)
    return Windows(ids, [d for d, _, _ in picked], [m for _, m, _ in picked])


def _proportional(groups: dict[str, list]) -> list:
    """The items of all groups in one order that keeps the groups in proportion.

    Item j of a group of n sits at (j + 1/2)/n; ties go in the groups' order.
    """
    keyed = [((j + 0.5) / len(items), rank, item) for rank, items in enumerate(groups.values())
             for j, item in enumerate(items)]
    return [item for _, _, item in sorted(keyed, key=lambda k: (k[0], k[1]))]


def split_by_document(
    tokenizer,
    texts: dict[str, str],
    *,
    seq_len: int,
    eval_sequences: int,
    calib_sequences: int,
    seed: int | None = None,
    sources: dict[str, list[dict]] | None = None,
) -> EvalSplit:
    """Evaluation and calibration windows from **disjoint documents**, every domain in proportion.

    Each domain's text is cut into documents (:func:`split_documents`) and each document into
    non-overlapping windows of ``seq_len`` tokens (documents shorter than that are skipped). The
    documents of all domains are put in one order that keeps the domains in proportion (document i
    of a domain with n documents sits at (i + 1/2)/n) and, within a domain, the strata of
    ``sources`` in proportion the same way. The first ``min(eval_sequences, documents - 1)``
    documents are the evaluation documents, the rest the calibration documents. Each set takes
    windows round-robin (the first window of every document, then the second ones, ...),
    ``eval_sequences`` and ``calib_sequences`` of them; with at least ``eval_sequences + 1``
    documents every evaluation document gives exactly one window, and with at least
    ``eval_sequences + calib_sequences`` every calibration document too.

    Parameters
    ----------
    seed
        None: the documents of a stratum in text order. An int: in an order drawn from the seed
        (the same seed gives the same split).
    sources
        Per domain of ``texts``, one dict per document of its text (in text order), e.g.
        :func:`bh_routing.embedded.default_eval_sources`: copied into :attr:`EvalSplit.documents`;
        its ``"stratum"`` entry, when present, names the document's stratum (default: one stratum).

    A text that is a single document cannot be split by document: its windows are then the units
    (``unit="window"``); the first ``eval_sequences`` windows evaluate and the following
    ``calib_sequences`` calibrate.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    by_domain: dict[str, list[tuple[str, str, torch.Tensor]]] = {}
    rows: list[dict] = []
    skipped = 0
    for domain, text in texts.items():
        parts = split_documents(text)
        meta = (sources or {}).get(domain)
        if meta is not None and len(meta) != len(parts):
            raise ValueError(f"sources[{domain!r}] has {len(meta)} entries, the text {len(parts)} documents")
        strata: dict[str, list[tuple[str, str, torch.Tensor]]] = {}
        for i, part in enumerate(parts):
            w = chunk_or_none(tokenizer, part, seq_len=seq_len)
            info = dict(meta[i]) if meta is not None else {}
            rows.append({"id": f"{domain}:{i}", "domain": domain, "split": "too-short" if w is None else "",
                         "windows": 0, **info})
            if w is None:
                skipped += 1
                continue
            strata.setdefault(str(info.get("stratum", "")), []).append((f"{domain}:{i}", domain, w))
        if seed is not None:
            for name, members in strata.items():
                random.Random(f"{seed}:{domain}:{name}").shuffle(members)  # str seed: same on every platform
        by_domain[domain] = _proportional(strata)
    ordered = _proportional(by_domain)
    unit = "document"
    if len(ordered) < 2:  # no boundaries: windows are the units
        unit = "window"
        ordered = [(f"{dom}:w{j}", dom, w[j : j + 1]) for doc, dom, w in ordered for j in range(len(w))]
    if len(ordered) < 2:
        raise ValueError(f"text too short: need at least 2 windows of seq_len={seq_len} tokens")
    n_eval = min(eval_sequences, len(ordered) - 1)
    evaluation = _round_robin(ordered[:n_eval], eval_sequences)
    calibration = _round_robin(ordered[n_eval:], calib_sequences)
    for name, got, need in (("evaluation", evaluation, eval_sequences), ("calibration", calibration, calib_sequences)):
        if len(got.documents) < need:
            raise ValueError(
                f"text too short: {name} needs {need} windows of {seq_len} tokens, its {got.num_documents} "
                f"documents give {len(got.documents)} (of {len(ordered)} documents in all)"
            )
    row = {r["id"]: r for r in rows}
    for name, windows in (("evaluation", evaluation), ("calibration", calibration)):
        for doc in windows.documents:
            if doc in row:  # unit "window": window ids, not document ids
                row[doc]["split"] = name
                row[doc]["windows"] += 1
    for r in rows:
        r["split"] = r["split"] or ("unused" if unit == "document" else "")
    return EvalSplit(evaluation, calibration, unit, skipped, rows if unit == "document" else [])


def chunk_or_none(tokenizer, text: str, *, seq_len: int) -> torch.Tensor | None:
    """:func:`chunk_text` of one document, None when it is shorter than ``seq_len`` tokens."""
    try:
        return chunk_text(tokenizer, text, seq_len=seq_len)
    except ValueError:
        return None
