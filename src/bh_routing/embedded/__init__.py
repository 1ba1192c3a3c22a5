"""The embedded default model and its held-out evaluation text.

``olmoe-tiny/`` is a small ``OlmoeForCausalLM`` (64 experts, top-8, ``norm_topk_prob=False``,
trained with OLMoE's load-balancing loss) trained by ``scripts/train_embedded.py`` on the train
split of a two-domain corpus (Python 3.11 documentation prose and Python 3.11 standard-library
code, both PSF-licensed, prepared by ``scripts/prepare_corpus.py``). Its model card is
``olmoe-tiny/README.md``.

``eval_text.txt`` is the held-out split of that corpus (files never seen in training: every held-out
file of both domains, 47 prose and 17 code, each cut to its first 5,000 characters), one block per
domain, each introduced by the line ``<<<bh-routing-eval-domain: NAME>>>``, documents separated by
the line ``<|endoftext|>``. Documents are the unit of evaluation: a run evaluates on some documents
and calibrates on the others (``bh_routing.analysis.data.split_by_document``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

__all__ = ["EMBEDDED_MODEL_DIR", "EVAL_TEXT_PATH", "EVAL_DOMAINS", "default_eval_text", "default_eval_texts"]

_HERE = Path(__file__).resolve().parent

#: Folder of the embedded model: ``AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_DIR)``.
EMBEDDED_MODEL_DIR: Path = _HERE / "olmoe-tiny"

#: The shipped held-out text, both domains with marker lines.
EVAL_TEXT_PATH: Path = _HERE / "eval_text.txt"

#: Domain names, in the order they appear in ``eval_text.txt``.
EVAL_DOMAINS: tuple[str, ...] = ("prose", "code")

_MARKER = re.compile(r"^<<<bh-routing-eval-domain: (\w+)>>>\n", re.MULTILINE)


@lru_cache(maxsize=1)
def default_eval_texts() -> dict[str, str]:
    """Held-out evaluation text per domain.

    Returns
    -------
    dict[str, str]
        ``{"prose": ..., "code": ...}``: Python documentation (reStructuredText) and Python
        standard-library source files that the embedded model never saw in training. Documents
        within a domain are separated by the line ``<|endoftext|>``.
    """
    raw = EVAL_TEXT_PATH.read_text(encoding="utf-8")
    parts = _MARKER.split(raw)  # ["", name1, text1, name2, text2, ...]
    texts = {name: text for name, text in zip(parts[1::2], parts[2::2])}
    if tuple(texts) != EVAL_DOMAINS:
        raise RuntimeError(f"eval_text.txt must hold the domains {EVAL_DOMAINS}, got {tuple(texts)}")
    return dict(texts)


def default_eval_text() -> str:
    """All held-out evaluation text (every domain, in ``EVAL_DOMAINS`` order, without markers)."""
    texts = default_eval_texts()
    return "\n<|endoftext|>\n".join(texts[d] for d in EVAL_DOMAINS)
