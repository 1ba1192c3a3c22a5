"""The recorded forward pass and the whole premise study on a tiny random OLMoE."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from bh_routing.study import RunConfig
from bh_routing.analysis.evaluate import sequence_nll
from bh_routing.analysis.premise import choose_settings, premise_study
from bh_routing.analysis.token_detail import record_detail, route_recorded
from bh_routing.core import BH, TopK


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def seqs(n=4, s=24, seed=0, vocab=2000):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab, (n, s), generator=g)


def test_record_detail_analyze_mode(tiny):
    x = seqs()
    d = record_detail(tiny, x, BH(0.2), mode="analyze", batch_size=3)
    assert d.shape == (2, 4, 24, 16) and d.loss.shape == d.entropy.shape == (4, 23)
    nll, _ = sequence_nll(tiny, x)
    assert d.loss.sum(axis=1) == pytest.approx(nll.numpy(), rel=1e-5)
    assert (d.entropy > 0).all()
    # the model's own choice is its top-4 of the recorded router logits; a re-routing agrees
    assert (d.model_chosen.sum(-1) == 4).all()
    assert (route_recorded(tiny, d, TopK(4)) == d.model_chosen).all()
    assert (route_recorded(tiny, d, BH(0.2)) == d.chosen).all()
    assert route_recorded(tiny, d, TopK(4), sequences=2).shape == (2, 2, 24, 16)
    assert np.allclose(d.probs.sum(-1), 1, atol=1e-5)


def test_record_detail_patch_mode_with_top_k_is_the_model(tiny):
    x = seqs(n=2)
    base = record_detail(tiny, x, TopK(4), mode="analyze")
    same = record_detail(tiny, x, TopK(4), mode="patch")
    assert same.model_chosen is None
    assert np.allclose(same.loss, base.loss, atol=1e-5)
    assert (same.chosen == base.model_chosen).all()


CFG = RunConfig(bh_pvalues="empirical", alpha=0.2, topp_values=[0.5, 0.9], ratio_values=[0.5, 0.1],
                seed=0)
MODEL = {"name": "tiny", "num_moe_layers": 2, "num_experts": 16, "top_k": 4}


def draw_all(res, folder):
    """The three figures and four sections render from the saved results alone (a JSON round trip)."""
    from bh_routing.report import FIGURES, SECTIONS
    from bh_routing.report.premise import PREMISE_FIGURES

    doc = json.loads(json.dumps({"model": MODEL, "config": CFG.to_dict(), "steps": {"premise": res}, "derived": {}}))
    paths = [FIGURES[name].draw(doc, folder / name) for name in PREMISE_FIGURES]
    text = "\n".join(line for s in SECTIONS.values() if s.needs == ("premise",) for line in s.render(doc, list(PREMISE_FIGURES)))
    for heading in ("## Does BH give hard tokens more experts?", "## Where the loss goes", "## Expert co-activation",
                    "## Domain and vocabulary specialisation", "![difficulty](difficulty.png)"):
        assert heading in text
    assert f"**Verdict: {res['difficulty']['verdict']}.**" in text
    return paths


def test_premise_study_end_to_end(tiny, tmp_path):
    x = seqs(n=6, s=32, vocab=40)  # token ids repeat: vocabulary specialisation has ids to measure
    settings = choose_settings(tiny, seqs(n=3, s=32, vocab=40, seed=9), CFG.routing(), None, top_k=4)
    res = premise_study(tiny, x, CFG.routing(), None, top_k=4, domains=["a", "b"] * 3, settings=settings)
    st = res["strategies"]
    for f in ("topp", "weight_ratio", "entropy"):  # chosen on the calibration windows, applied to the evaluation ones
        assert st[f]["param"] == settings["families"][f]["param"]
        assert st[f]["calibration_k"] == settings["families"][f]["calibration_k"]
    assert st["bh"]["calibration_k"] == settings["bh_calibration_k"] and res["choice_windows"] == 3
    assert st["bh"]["strategy"]["alpha"] == 0.2 and st["bh"]["strategy"]["pvalues"] == "empirical"  # the config's BH
    assert st["topp"]["param"] in (0.5, 0.9) and st["weight_ratio"]["param"] in (0.5, 0.1)
    d = res["difficulty"]
    assert d["tokens"] == 6 * 31 and d["documents"] == 6 and d["verdict"] == "too few documents"
    assert {r["strategy"] for r in d["spearman"]} == {"bh", "topp", "weight_ratio", "entropy", "bh_patched"}
    assert st["entropy"]["param"] in (0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
    assert res["coactivation"]["rules"] == ["topk", "bh"]
    assert res["domain_specialization"]["domains"] == ["a", "b"]
    assert len(res["vocabulary_specialization"]["per_rule"]["bh"]["per_layer"]) == 2
    assert res["loss_attribution"]["mean_mass_dropped"] >= -1e-6
    json.dumps(res, allow_nan=False)  # undefined numbers are None: a cached step equals a fresh one
    assert all(p.stat().st_size > 10_000 for p in draw_all(res, tmp_path))


def test_premise_study_documents_and_skipped_parts(tiny, tmp_path):
    # documents as the resampling unit (pairs of sequences); no domains; ids too rare for vocabulary
    settings = choose_settings(tiny, seqs(n=2, s=16, seed=9), CFG.routing(), None, top_k=4)
    res = premise_study(tiny, seqs(n=4, s=16), CFG.routing(), None, top_k=4, documents=["x", "x", "y", "y"],
                        settings=settings)
    assert res["difficulty"]["documents"] == 2 and res["documents"] == 2 and "skipped" in res["domain_specialization"]
    assert "skipped" in res["vocabulary_specialization"]
    assert all(p.stat().st_size > 10_000 for p in draw_all(res, tmp_path))


def test_the_premise_step_passes_the_evaluation_documents(monkeypatch):
    """Windows of one document are not independent: the step hands premise_study each window's document."""
    from types import SimpleNamespace

    from bh_routing.study.steps import premise as step

    seen, chosen_on = {}, []
    monkeypatch.setattr(step, "premise_study", lambda *a, **k: seen.update(k) or {})
    monkeypatch.setattr(step, "choose_settings", lambda model, seqs, *a, **k: chosen_on.append(seqs) or {"families": {}})
    calib = torch.zeros(40, 8, dtype=torch.long)
    inputs = SimpleNamespace(eval_seqs=None, eval_domains=["prose", "prose", "code"], eval_documents=["p:0", "p:0", "c:0"],
                             calib_seqs=calib)
    step._premise(SimpleNamespace(model=None, rs=None, calibration=None, routing=SimpleNamespace(top_k=4), inputs=inputs))
    assert seen["documents"] == ["p:0", "p:0", "c:0"] and seen["domains"] == ["prose", "prose", "code"]
    assert chosen_on[0].shape == (step.CHOICE_WINDOWS, 8) and seen["settings"] == {"families": {}}  # calibration text
