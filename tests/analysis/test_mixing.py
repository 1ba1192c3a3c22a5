"""The baseline mixed to the rule's evaluation mean k (analysis.mixing) and its verdicts in
derive.matched_verdicts: exact expectation, the bracketing rule, outside, the second Holm family."""

import math

import numpy as np
import pytest

from bh_routing.analysis import derive
from bh_routing.analysis.evaluate import document_loss, document_mean_k
from bh_routing.analysis.mixing import bracket, family_runs, mixed_run, mixed_to
from bh_routing.analysis.stats import holm

N = 32
TOKENS = 255


def make_run(label, family, param, loss, *, mean_k):
    """A saved run whose sequence i has mean loss ``loss[i]`` nats per token."""
    loss = np.asarray(loss, float)
    return {"label": label, "family": family, "param": param, "mean_k": mean_k, "seq_nll": list(loss * TOKENS),
            "seq_tokens": [TOKENS] * len(loss), "seq_mean_k": [mean_k] * len(loss), "strategy": {"name": family}}


def base_losses(n=N, seed=0):
    return 3.0 + np.random.default_rng(seed).normal(0, 0.4, n)  # documents differ a lot


def noise(n, seed, sd=0.01):
    return np.random.default_rng(seed).normal(0, sd, n)


def target(baseline, run, *, matched=True, primary=False, family="bh-calibrated"):
    return {"family": family, "baseline": baseline["label"], "baseline_family": baseline["family"],
            "target_k": baseline["mean_k"], "param": 0.01, "calibration_k": baseline["mean_k"] + (0 if matched else 0.4),
            "matched": matched, "passes": 1, "reason": None if matched else "not within 0.02 of the target after 8 passes",
            "primary": primary, "run": run}


def topk_runs(base):
    """Top-k at k = 1..8 whose loss falls by 0.2 nats per expert."""
    return {k: make_run(f"TopK(k={k})", "topk", k, base + 0.2 * (8 - k), mean_k=float(k)) for k in range(1, 9)}


def test_bracket_is_floor_and_ceil_for_topk_and_f_meets_k_exactly():
    tk = topk_runs(base_losses(N))
    lo, hi, f = bracket(family_runs(list(tk.values()), "topk"), 5.25)
    assert (lo["param"], hi["param"]) == (5, 6) and f == pytest.approx(0.25)
    run, info = mixed_to(list(tk.values()), "topk", 5.25)
    assert run["mean_k"] == pytest.approx(5.25) and info["fraction_hi"] == pytest.approx(0.25)
    assert info["lo"] == "TopK(k=5)" and info["hi"] == "TopK(k=6)"
    # a k that a run has exactly: that run alone
    run, info = mixed_to(list(tk.values()), "topk", 6.0)
    assert run["label"] == "TopK(k=6)" and info["fraction_hi"] == 0.0


def test_exact_expectation_equals_the_mean_of_per_document_random_draws():
    """The per-document expectation is what a per-document coin gives on average (loss and mean k)."""
    documents = [f"d{i // 2}" for i in range(2 * N)]  # two windows per document
    rng = np.random.default_rng(0)
    lo = make_run("TopK(k=5)", "topk", 5, 3 + rng.normal(0, 0.3, 2 * N), mean_k=5.0)
    hi = make_run("TopK(k=6)", "topk", 6, 2.9 + rng.normal(0, 0.3, 2 * N), mean_k=6.0)
    lo["seq_mean_k"], hi["seq_mean_k"] = list(5 + rng.normal(0, 0.01, 2 * N)), list(6 + rng.normal(0, 0.01, 2 * N))
    f = 0.3
    mix = mixed_run(lo, hi, f)
    l_lo, l_hi = document_loss(lo, documents), document_loss(hi, documents)
    assert document_loss(mix, documents) == pytest.approx((1 - f) * l_lo + f * l_hi)
    k_lo, k_hi = document_mean_k(lo, documents), document_mean_k(hi, documents)
    assert document_mean_k(mix, documents) == pytest.approx((1 - f) * k_lo + f * k_hi)
    draws = rng.random((20000, N)) < f  # (R, D): document d routed with hi in draw r
    assert np.where(draws, l_hi, l_lo).mean(axis=0) == pytest.approx(document_loss(mix, documents), abs=0.01)


def test_refuses_windows_that_differ_and_fractions_outside_0_1():
    a = make_run("A", "topk", 5, np.ones(4), mean_k=5.0)
    b = make_run("B", "topk", 6, np.ones(5), mean_k=6.0)
    with pytest.raises(ValueError, match="not run on the same windows"):
        mixed_run(a, b, 0.5)
    with pytest.raises(ValueError, match=r"f must be in \[0, 1\], got 1.5"):
        mixed_run(a, a, 1.5)


def test_outside_the_familys_evaluated_range():
    tk = topk_runs(base_losses(N))
    run, info = mixed_to([tk[k] for k in (2, 3, 4)], "topk", 4.06)
    assert run is None and info["reason"] == (
        "outside: the baseline's family reaches mean k 2.000 to 4.000 on the evaluation documents, the rule used 4.060")
    assert mixed_to(list(tk.values()), "topp", 3.0)[1]["reason"].startswith("outside: no runs")


def test_a_rule_that_only_buys_its_extra_experts_wins_at_the_target_and_ties_at_its_evaluation_k():
    """The issue-#26 bias pinned: BH used more experts on the evaluation text than its target; its loss is
    exactly the mixed top-k's at its evaluation k, so it 'wins' against top-k at the target and ties at
    its own k."""
    base = base_losses(N)
    tk = topk_runs(base)
    k_e = 5.08
    lo, hi = document_loss(tk[5], None), document_loss(tk[6], None)
    bh = make_run("BH@5", "bh-calibrated", 0.03, (1 - 0.08) * lo + 0.08 * hi + noise(N, 1, sd=0.0005), mean_k=k_e)
    v = derive.matched_verdicts({"tolerance": 0.02, "targets": [target(tk[5], bh, primary=True)]},
                                list(tk.values()), documents=None)
    p = v["primary"]
    assert p["word"] == "wins" and p["comparison"]["mean_diff"] == pytest.approx(-0.016, abs=0.001)
    assert p["word_at_eval_k"] == "ties" and abs(p["comparison_at_eval_k"]["mean_diff"]) < 0.001
    assert p["at_eval_k"]["lo"] == "TopK(k=5)" and p["at_eval_k"]["hi"] == "TopK(k=6)"
    assert p["at_eval_k"]["fraction_hi"] == pytest.approx(0.08)
    assert p["comparison_at_eval_k"]["correction"] == "none"  # the primary's counterpart: alone, a sensitivity check
    assert v["eval_k_gap"] == {"mean": pytest.approx(0.08), "max": pytest.approx(0.08), "n": 1}


def test_the_grid_at_evaluation_k_is_a_second_holm_family_and_outside_keeps_its_reason():
    base = base_losses(N)
    tk = topk_runs(base)
    runs = {k: make_run(f"BH@{k}", "bh-calibrated", 0.01 * k, base + 0.2 * (8 - k) - 0.01 * (k - 3) + noise(N, k),
                        mean_k=k + 0.05) for k in (2, 3, 4, 5)}
    matched = {"tolerance": 0.02, "targets": [target(tk[k], runs[k]) for k in (2, 3, 4, 5)]
               + [target(tk[7], make_run("BH@7.4", "bh-calibrated", 0.3, base, mean_k=7.4), matched=False)]}
    v = derive.matched_verdicts(matched, list(tk.values()), documents=None)
    rows = {r["baseline"]: r for r in v["grid"]}
    assert v["family_size"] == 4 and v["family_size_at_eval_k"] == 4
    at = [rows[f"TopK(k={k})"]["comparison_at_eval_k"] for k in (2, 3, 4, 5)]
    assert [c["p_adjusted"] for c in at] == pytest.approx(list(holm([c["t_pvalue"] for c in at])))
    assert all(c["correction"] == "holm" for c in at)
    out = rows["TopK(k=7)"]
    assert out["word"] == out["word_at_eval_k"] == "outside" and out["comparison_at_eval_k"] is None
    assert out["reason_at_eval_k"] == out["reason"] and "not within" in out["reason"]
    assert v["eval_k_gap"]["mean"] == pytest.approx(0.05)


def test_a_challenger_against_bh_is_mixed_from_bhs_alpha_sweep():
    base = base_losses(N)
    tk = topk_runs(base)
    bh5 = make_run("BH@5", "bh-calibrated", 0.03, base + 0.6, mean_k=5.0)
    sweep = [make_run(f"BH(α={a})", "bh-calibrated", a, base + 0.2 * (8 - k), mean_k=k)
             for a, k in ((0.01, 4.5), (0.3, 5.5))]
    ent = make_run("Entropy(s=1)", "entropy", 1.0, base + 0.55, mean_k=5.2)
    targets = [target(tk[5], bh5), target(tk[5], ent, family="entropy")]
    v = derive.matched_verdicts({"tolerance": 0.02, "targets": targets}, list(tk.values()), documents=None, pool=sweep)
    vs_bh = next(r for r in v["grid"] if r["bh_family"] == "entropy" and r["baseline_family"] == "bh-calibrated")
    # BH's runs at k 4.5 (sweep), 5.0 (its matched run) and 5.5: 5.2 lies between 5.0 and 5.5
    assert vs_bh["at_eval_k"]["lo"] == "BH@5" and vs_bh["at_eval_k"]["hi"] == "BH(α=0.3)"
    assert vs_bh["at_eval_k"]["fraction_hi"] == pytest.approx(0.4)
    mix = 0.6 * (base + 0.6) + 0.4 * (base + 0.5)
    assert vs_bh["comparison_at_eval_k"]["mean_diff"] == pytest.approx(float(np.mean(base + 0.55 - mix)))
    assert math.isfinite(vs_bh["comparison"]["mean_diff"])
