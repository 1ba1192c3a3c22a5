"""Documents, the evaluation/calibration split by document, and the shipped held-out text."""

import pytest
import torch
from transformers import AutoTokenizer

from bh_routing import RunConfig
from bh_routing.analysis.data import split_by_document, split_documents
from bh_routing.embedded import EMBEDDED_MODEL_DIR, default_eval_sources, default_eval_texts


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)


def _docs(prefix, n, words):
    return "\n<|endoftext|>\n".join(" ".join(f"{prefix}{i}w{j}" for j in range(words)) for i in range(n))


def test_split_documents():
    text = "first doc\nline\n<|endoftext|>\n\n<|endoftext|>\nsecond\n<|endoftext|>  \nthird"
    assert split_documents(text) == ["first doc\nline", "second", "third"]
    assert split_documents("no separators at all") == ["no separators at all"]
    assert split_documents("inline <|endoftext|> is not a separator") == ["inline <|endoftext|> is not a separator"]


def test_split_is_by_document_disjoint_and_proportional(tok):
    texts = {"a": _docs("alpha", 12, 60), "b": _docs("beta", 6, 60)}
    sp = split_by_document(tok, texts, seq_len=16, eval_sequences=6, calib_sequences=20)
    ev, cal = sp.evaluation, sp.calibration
    assert sp.unit == "document" and not set(ev.documents) & set(cal.documents)
    assert len(ev.documents) == ev.num_documents == 6  # one window per evaluation document
    assert ev.summary()["documents_per_domain"] == {"a": 4, "b": 2}  # 12:6 in proportion
    assert len(cal.documents) == 20 and cal.num_documents == 12  # the other documents, round-robin
    assert cal.documents[:12] == list(dict.fromkeys(cal.documents))  # first windows first
    assert all(d.split(":")[0] == m for d, m in zip(ev.documents + cal.documents, ev.domains + cal.domains))
    first = tok(split_documents(texts["a"])[0], add_special_tokens=False)["input_ids"][:16]
    assert ev.documents[0] == "a:0" and ev.ids[0].tolist() == first  # a window starts its document
    s = sp.summary()
    assert s["documents"] == 6 and s["sequences"] == 6 and s["calibration"]["documents"] == 12 and s["unit"] == "document"


def test_split_errors_and_single_document_fallback(tok):
    texts = {"a": _docs("alpha", 3, 60)}
    with pytest.raises(ValueError, match="calibration needs 50 windows"):
        split_by_document(tok, texts, seq_len=16, eval_sequences=2, calib_sequences=50)
    short = {"a": "tiny\n<|endoftext|>\n" + _docs("alpha", 3, 60)}
    assert split_by_document(tok, short, seq_len=16, eval_sequences=2, calib_sequences=2).skipped_short == 1
    one = {"text": " ".join(f"w{j}" for j in range(400))}
    sp = split_by_document(tok, one, seq_len=16, eval_sequences=4, calib_sequences=5)
    assert sp.unit == "window" and sp.evaluation.num_documents == 4 and sp.calibration.num_documents == 5
    assert not set(sp.evaluation.documents) & set(sp.calibration.documents)
    assert torch.equal(torch.cat([sp.evaluation.ids, sp.calibration.ids]).flatten()[:16], sp.evaluation.ids[0])


def test_seed_and_strata(tok):
    texts = {"a": _docs("alpha", 12, 60), "b": _docs("beta", 8, 60)}
    sources = {"a": [{"stratum": "x" if i < 8 else "y", "path": f"a{i}"} for i in range(12)],
               "b": [{"stratum": "z"} for _ in range(8)]}
    split = lambda seed: split_by_document(tok, texts, seq_len=16, eval_sequences=5, calib_sequences=15,  # noqa: E731
                                           seed=seed, sources=sources)
    sp, again, other = split(3), split(3), split(4)
    assert sp.evaluation.documents == again.evaluation.documents and sp.documents == again.documents
    assert sp.evaluation.documents != other.evaluation.documents  # the seed draws the order
    assert torch.equal(sp.evaluation.ids, again.evaluation.ids)
    ev = sp.evaluation.documents
    assert sorted(d.split(":")[0] for d in ev) == ["a", "a", "a", "b", "b"]  # 12:8 in proportion
    strata = [sources["a"][int(d.split(":")[1])]["stratum"] for d in ev if d.startswith("a:")]
    assert sorted(strata) == ["x", "x", "y"]  # 8:4 in proportion within the domain
    rows = {r["id"]: r for r in sp.documents}
    assert len(rows) == 20 and rows["a:3"]["path"] == "a3"
    assert {r["id"] for r in sp.documents if r["split"] == "evaluation"} == set(ev)
    assert {r["id"] for r in sp.documents if r["split"] == "calibration"} == set(sp.calibration.documents)
    assert all(r["windows"] == 1 for r in sp.documents)  # 5 + 15 = 20 documents: one window each
    # no seed: each stratum in text order (a: x0 y0 x1 x2 y1 ..., b: b0 b1 ...)
    assert sorted(split(None).evaluation.documents) == ["a:0", "a:1", "a:8", "b:0", "b:1"]
    with pytest.raises(ValueError, match="sources\\['a'\\] has 1 entries, the text 12 documents"):
        split_by_document(tok, texts, seq_len=16, eval_sequences=5, calib_sequences=15, sources={"a": [{}]})


def test_default_split_of_the_shipped_text(tok):
    """The run's default split: >= 64 evaluation documents (>= 24 per domain), >= 100 calibration ones."""
    cfg = RunConfig()
    split = lambda seed: split_by_document(  # noqa: E731
        tok, default_eval_texts(), seq_len=cfg.seq_len, eval_sequences=cfg.eval_sequences,
        calib_sequences=cfg.calib_sequences, seed=seed, sources=default_eval_sources())
    sp = split(cfg.seed)
    s = sp.summary()
    assert s["documents"] == s["sequences"] == cfg.eval_sequences >= 64
    assert set(s["documents_per_domain"]) == {"prose", "code"} and min(s["documents_per_domain"].values()) >= 24
    assert s["calibration"]["documents"] >= 100 and s["calibration"]["sequences"] == cfg.calib_sequences
    assert not set(sp.evaluation.documents) & set(sp.calibration.documents)
    rows = sp.documents
    assert len(rows) == sum(len(v) for v in default_eval_sources().values())
    for split_name in ("evaluation", "calibration"):
        picked = [r for r in rows if r["split"] == split_name]
        assert {r["origin"] for r in picked} == {"held-out", "beyond-cap", "other-package"}
        assert all(r["package"] and r["path"] and r["licence"] for r in picked)
    assert split(cfg.seed).documents == rows  # deterministic given the seed
