"""The α search that matches BH's mean k to a baseline's, on a tiny random OLMoE."""

import math

import pytest
import torch

from bh_routing.analysis.matching import AlphaSearch, OfflineBH, matched_runs, patch_pass, primary_k
from bh_routing.core import BH, TopK, TopP
from bh_routing.models import load_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, _ = load_model(tiny_model_dir, device="cpu")
    torch.manual_seed(0)
    return model, torch.randint(2, 4000, (6, 24))  # (N, S) calibration windows


def test_offline_count_is_bh_on_the_same_logits(tiny):
    model, seqs = tiny
    _, logits = patch_pass(model, seqs, BH(0.05))
    off = OfflineBH(lambda a: BH(a, max_k=4), logits, max_k=4)
    for alpha in (1e-4, 0.01, 0.05, 0.3, 1.0):
        want = torch.cat([BH(alpha, max_k=4).route(z, layer=i, model_top_k=4).counts for i, z in enumerate(logits)])
        assert off.mean_k(alpha) == pytest.approx(want.double().mean().item())
    lo, hi = math.log(1e-4), 0.0
    x = off.solve(2.5, lo, hi)
    assert off.mean_k(math.exp(x) * 0.999) <= 2.5 <= off.mean_k(math.exp(x) * 1.001)


def test_search_hits_the_target_on_calibration_windows(tiny):
    model, seqs = tiny
    search = AlphaSearch(model, seqs, lambda a: BH(a), model_top_k=4, tol=0.02)
    k_min, k_max = search.reach
    assert k_min < 2.0 < k_max and search.passes == 2
    m = search.find(2.0)
    assert m.matched and abs(m.calibration_k - 2.0) <= 0.02 and m.passes <= 5
    assert abs(patch_pass(model, seqs, BH(m.param))[0] - 2.0) <= 0.02  # the α really gives that k
    assert m.reason is None
    out = search.find(k_max + 0.5)
    assert not out.matched and out.param is None and out.reason.startswith("outside")


def test_primary_k_rule():
    assert primary_k(5.5, lo=2, hi=7) == 6 and primary_k(5.49, lo=2, hi=7) == 5
    assert primary_k(1.2, lo=2, hi=7) == 2 and primary_k(7.9, lo=2, hi=7) == 7


def test_matched_runs_targets_and_primary(tiny):
    model, seqs = tiny
    ev = torch.randint(2, 4000, (3, 24))
    baselines = [{"label": f"TopK(k={k})", "family": "topk", "param": k, "mean_k": float(k), "strategy": TopK(k).describe()}
                 for k in (1, 2, 3, 4)]
    baselines.append({"label": "TopP(p=0.5)", "family": "topp", "param": 0.5, "mean_k": 2.2,
                      "strategy": TopP(0.5, max_k=4).describe()})
    baselines.append({"label": "TopP(p=0.99)", "family": "topp", "param": 0.99, "mean_k": 3.9,
                      "strategy": TopP(0.99, max_k=4).describe()})
    res = matched_runs(model, seqs, ev, make_bh=lambda m, a: BH(a, pvalues=m), methods=["empirical"],
                       report_method="empirical", alpha=0.05, baselines=baselines, top_k=4, min_k=1, max_k=4,
                       label=lambda m, a: f"BH-{m}({a:.3g})")
    assert patch_pass(model, seqs, TopP(0.99, max_k=4))[0] > 3.5 > patch_pass(model, seqs, TopP(0.5, max_k=4))[0] > 1.5
    assert [t["baseline"] for t in res["targets"]] == ["TopK(k=2)", "TopK(k=3)", "TopP(p=0.5)"]  # calibration k in [1.5, 3.5]
    assert sum(t["primary"] for t in res["targets"]) == 1 and res["primary_k"] in (2, 3)
    for t in res["targets"]:
        if t["matched"]:
            assert abs(t["calibration_k"] - t["target_k"]) <= res["tolerance"]
            assert t["run"]["family"] == "bh-empirical" and len(t["run"]["seq_nll"]) == 3
        else:
            assert t["run"] is None and t["reason"]
