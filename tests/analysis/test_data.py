"""Documents, the evaluation/calibration split by document, and the shipped held-out text."""

import pytest
import torch
from transformers import AutoTokenizer

from bh_routing.analysis.data import split_by_document, split_documents
from bh_routing.embedded import EMBEDDED_MODEL_DIR, default_eval_texts


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


def test_shipped_text_gives_30_evaluation_documents_of_both_domains(tok):
    sp = split_by_document(tok, default_eval_texts(), seq_len=256, eval_sequences=32, calib_sequences=64)
    s = sp.summary()
    assert s["documents"] == s["sequences"] == 32
    assert set(s["documents_per_domain"]) == {"prose", "code"}
    assert min(s["documents_per_domain"].values()) >= 5
    assert s["calibration"]["documents"] >= 16 and s["calibration"]["sequences"] == 64
    assert not set(sp.evaluation.documents) & set(sp.calibration.documents)
