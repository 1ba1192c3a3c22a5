"""The shipped held-out text: its manifest, the hash rule, licences, and no text shared with training.

``tests/embedded/data/train_passages.npy`` holds the winnowed passage hashes of the training text
(``scripts/prepare_corpus.py`` writes it; ``bh_routing.embedded._overlap`` explains the guarantee):
a shipped document sharing a stretch of 299+ characters with the training text fails here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bh_routing.analysis.data import split_documents
from bh_routing.embedded import (
    EVAL_DOMAINS,
    EVAL_MANIFEST_PATH,
    EVAL_TEXT_PATH,
    _overlap,
    default_eval_sources,
    default_eval_texts,
)
from bh_routing.embedded import _manifest as manifest_of

TRAIN_PASSAGES = Path(__file__).parent / "data" / "train_passages.npy"


@pytest.fixture(scope="module")
def manifest():
    return manifest_of()


@pytest.fixture(scope="module")
def documents():
    return {d: split_documents(t) for d, t in default_eval_texts().items()}


def _bucket(domain: str, rel: str) -> int:  # the hash rule of scripts/prepare_corpus.py
    return int(hashlib.sha256(f"{domain}:{rel}".encode()).hexdigest()[:8], 16)


def test_manifest_describes_the_shipped_text(manifest, documents):
    assert manifest["sha256"] == hashlib.sha256(EVAL_TEXT_PATH.read_bytes()).hexdigest()
    assert tuple(manifest["documents"]) == EVAL_DOMAINS
    for domain, docs in documents.items():
        listed = manifest["documents"][domain]
        assert len(listed) == len(docs)
        assert all(0 < x["chars"] - len(d) <= 3 for x, d in zip(listed, docs))  # + final newlines (<= 3)
    assert manifest["edition"] == 2 and all(len(d) >= 128 for d in documents.values())


def test_edition_one_documents_come_first(manifest):
    for domain in EVAL_DOMAINS:
        origins = [x["origin"] for x in manifest["documents"][domain]]
        n = origins.count("held-out")
        assert origins[:n] == ["held-out"] * n and n >= 17  # edition 1: 47 prose, 17 code


def test_hash_rule(manifest):
    """Held-out files are held out by the hash rule; beyond-cap files are train files not in the training text."""
    training = manifest["training"]
    percent = training["heldout_percent"]
    for domain, docs in manifest["documents"].items():
        train_files = set(training["train_files"][domain])
        for x in docs:
            if x["origin"] == "held-out":
                assert _bucket(domain, x["path"]) % 100 < percent, x
            elif x["origin"] == "beyond-cap":
                assert _bucket(domain, x["path"]) % 100 >= percent and x["path"] not in train_files, x
            else:
                assert x["origin"] == "other-package" and x["package"] not in training["packages"], x
            assert x["origin"] == "other-package" or x["path"] not in train_files


def test_no_shipped_document_shares_text_with_the_training_text(manifest, documents):
    reference = np.load(TRAIN_PASSAGES)
    assert reference.dtype == np.uint64 and len(reference) > 50_000 and np.all(np.diff(reference) > 0)
    for domain, docs in documents.items():
        for text, x in zip(docs, manifest["documents"][domain]):
            shared = _overlap.shared_passages(text + "\n", reference)
            # the sample is a subset of the training passages: never more hits than the exact count
            assert shared <= x["shared_passages"], (domain, x["path"], shared)
            if x["origin"] != "held-out":
                assert x["shared_passages"] == 0


def test_added_documents_share_no_text_with_each_other(manifest, documents):
    seen: dict[int, str] = {}
    for domain, docs in documents.items():
        for i, (text, x) in enumerate(zip(docs, manifest["documents"][domain])):
            own = set(_overlap.passage_hashes(text + "\n").tolist())
            if x["origin"] != "held-out":
                clash = {seen[h] for h in own if h in seen}
                assert not clash, (f"{domain}:{i}", clash)
            for h in own:
                seen.setdefault(h, f"{domain}:{i}")


def test_the_check_can_fail(manifest, documents):
    """Positive control: the sample finds the text some edition-1 files share with the training text.

    Edition 1 was checked on the first 400 characters of each document only; some of its files
    share boilerplate (licence headers, repeated paragraphs) with training files further down.
    """
    reference = np.load(TRAIN_PASSAGES)
    found = {}
    for domain, docs in documents.items():
        for text, x in zip(docs, manifest["documents"][domain]):
            if x["shared_passages"] >= 200:  # a long shared stretch: the sample must see it
                found[f"{domain}:{x['path']}"] = _overlap.shared_passages(text + "\n", reference)
    assert len(found) >= 2 and all(found.values()), found
    assert _overlap.shared_passages("x" * 400, reference) == 0  # no letters: never a passage


def test_sources_and_licences(manifest):
    sources = default_eval_sources()
    assert tuple(sources) == EVAL_DOMAINS
    for domain, rows in sources.items():
        assert len(rows) == len(manifest["documents"][domain])
        assert {r["origin"] for r in rows} >= {"held-out", "other-package"}
        for r in rows:
            assert r["licence"] and r["version"] and r["stratum"] == f"{r['origin']}/{r['package']}"
    for package, info in manifest["packages"].items():
        copyright_file = EVAL_MANIFEST_PATH.parent / info["copyright"]
        assert copyright_file.is_file(), package
        assert f"License: {info['licence']}" in copyright_file.read_text(encoding="utf-8")
        assert info["licence"] in {"BSD-2-clause", "BSD-3-clause", "Expat"}


def test_shipped_files_are_small():
    size = EVAL_TEXT_PATH.stat().st_size + EVAL_MANIFEST_PATH.stat().st_size + TRAIN_PASSAGES.stat().st_size
    size += sum(f.stat().st_size for f in (EVAL_MANIFEST_PATH.parent / "eval_licences").iterdir())
    assert size < 4e6


def test_edition_1_is_the_first_documents_of_each_domain():
    from bh_routing.analysis.data import split_documents
    from bh_routing.embedded import default_eval_sources, default_eval_texts, edition_1_texts

    old, new = edition_1_texts(), default_eval_texts()
    for domain in new:
        n = sum(d["origin"] == "held-out" for d in default_eval_sources()[domain])
        assert split_documents(old[domain]) == split_documents(new[domain])[:n]
    assert [len(split_documents(old[d])) for d in ("prose", "code")] == [47, 17]
