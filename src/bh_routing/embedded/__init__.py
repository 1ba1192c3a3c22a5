"""The embedded default model and its held-out evaluation text.

``olmoe-tiny/`` is a small ``OlmoeForCausalLM`` (64 experts, top-8, ``norm_topk_prob=False``,
trained with OLMoE's load-balancing loss) trained by ``scripts/train_embedded.py`` on the train
split of a two-domain corpus (Python 3.11 documentation prose and Python 3.11 standard-library
code, both PSF-licensed, prepared by ``scripts/prepare_corpus.py``). Its model card is
``olmoe-tiny/README.md``.

``eval_text.txt`` holds documents the model never saw, one block per domain, each introduced by
the line ``<<<bh-routing-eval-domain: NAME>>>``, documents separated by the line
``<|endoftext|>``, each cut to its first 5,000 characters. Edition 2 (``eval_manifest.json``:
``edition``), 128 documents per domain, of three origins:

- ``held-out`` (47 prose, 17 code; the whole of edition 1, first in each block and in the same
  order): files of the two training packages held out by the hash rule - the training
  distribution;
- ``beyond-cap`` (prose only): ``python3.11-doc`` files of the train split that lie beyond the
  training text's character cap, so never in it - also the training distribution;
- ``other-package``: the reStructuredText manuals (prose) and the Python modules (code) of Sphinx,
  Flask, pytest and Werkzeug, from their Debian packages - **not** the training distribution:
  other projects and authors, third-party libraries and manuals (web frameworks, a test runner, a
  documentation generator) in a more recent style of Python, while the model was trained on
  CPython's own documentation and standard library only. Licences: BSD-2-Clause, BSD-3-Clause,
  Expat; each package's Debian copyright file is in ``eval_licences/``.

No added document shares a 100-character passage with the training text or with another
document (checked by ``scripts/prepare_corpus.py``; the tests re-check every shipped document).
:func:`default_eval_sources` gives each document's package, path, origin and licence, so results
can be reported per origin. Documents are the unit of evaluation: a run evaluates on some
documents and calibrates on others (``bh_routing.analysis.data.split_by_document``).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

__all__ = [
    "EMBEDDED_MODEL_DIR",
    "EVAL_TEXT_PATH",
    "EVAL_MANIFEST_PATH",
    "EVAL_DOMAINS",
    "default_eval_text",
    "default_eval_texts",
    "default_eval_sources",
]

_HERE = Path(__file__).resolve().parent

#: Folder of the embedded model: ``AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_DIR)``.
EMBEDDED_MODEL_DIR: Path = _HERE / "olmoe-tiny"

#: The shipped held-out text, both domains with marker lines.
EVAL_TEXT_PATH: Path = _HERE / "eval_text.txt"

#: Where each document of ``eval_text.txt`` comes from (package, version, path, origin, licence).
EVAL_MANIFEST_PATH: Path = _HERE / "eval_manifest.json"

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


def edition_1_texts() -> dict[str, str]:
    """The first edition of the held-out text (47 prose and 17 code documents): the ``held-out``
    documents, which open each domain's block in their first edition's order."""
    sep = "\n<|endoftext|>\n"
    out = {}
    for domain, text in default_eval_texts().items():
        n = sum(d["origin"] == "held-out" for d in default_eval_sources()[domain])
        out[domain] = sep.join(text.split(sep)[:n]).rstrip("\n") + "\n"
    return out


def default_eval_text() -> str:
    """All held-out evaluation text (every domain, in ``EVAL_DOMAINS`` order, without markers)."""
    texts = default_eval_texts()
    return "\n<|endoftext|>\n".join(texts[d] for d in EVAL_DOMAINS)


@lru_cache(maxsize=1)
def _manifest() -> dict:
    return json.loads(EVAL_MANIFEST_PATH.read_text(encoding="utf-8"))


def default_eval_sources() -> dict[str, list[dict]]:
    """Where each document of the held-out text comes from, per domain in text order.

    Returns
    -------
    dict[str, list[dict]]
        ``{"prose": [...], "code": [...]}``, one dict per document (document ``i`` of a domain is
        ``"domain:i"`` in :func:`bh_routing.analysis.data.split_by_document`): ``package`` and
        ``version`` (Debian), ``path`` (inside the package's source folder), ``origin``
        (``"held-out"``, ``"beyond-cap"`` or ``"other-package"``), ``licence``, ``stratum``
        (``"origin/package"``: the split keeps strata in proportion) and ``shared_passages``
        (100-character passages the document shares with the training text: 0 for every added
        document; edition-1 documents were checked only on their first 400 characters, and 20 of
        them share boilerplate such as licence headers or repeated paragraphs).
    """
    m = _manifest()
    versions = {**{k: v["version"] for k, v in m["training"]["packages"].items() if isinstance(v, dict)},
                **{k: v["version"] for k, v in m["packages"].items()}}
    licences = {**{k: m["training"]["packages"]["licence"] for k in m["training"]["packages"] if k != "licence"},
                **{k: v["licence"] for k, v in m["packages"].items()}}
    return {
        domain: [{"package": d["package"], "version": versions[d["package"]], "path": d["path"], "origin": d["origin"],
                  "licence": licences[d["package"]], "stratum": f"{d['origin']}/{d['package']}",
                  "shared_passages": d["shared_passages"]} for d in docs]
        for domain, docs in m["documents"].items()
    }
