"""The derivations on hand-built runs with known per-document losses: direction, matching, correction,
reduction, ratio, and the rule that gives no verdict below the minimum number of documents."""

import math

import numpy as np
import pytest

from bh_routing.analysis import derive
from bh_routing.analysis.evaluate import document_loss, per_document
from bh_routing.analysis.stats import MIN_DOCUMENTS, holm

TOKENS = 255


def make_run(label, family, param, loss, *, mean_k, documents=None):
    """A saved run whose sequence i has mean loss ``loss[i]`` nats per token."""
    loss = np.asarray(loss, float)
    n = len(loss)
    return {
        "label": label, "family": family, "param": param, "mean_k": mean_k, "sd_k": 0.5,
        "k_histogram": [0, 10, 20, 30, 40, 30, 20, 10, 5], "mean_k_per_layer": [mean_k] * 2,
        "expert_counts": [[1] * 8] * 2, "compute_fraction": mean_k / 8,
        "seq_nll": list(loss * TOKENS), "seq_tokens": [TOKENS] * n, "seq_mean_k": [mean_k] * n,
        "strategy": {"name": family},
    }


def base_losses(n=32, seed=0):
    return 3.0 + np.random.default_rng(seed).normal(0, 0.4, n)  # documents differ a lot


def noise(n, seed, sd=0.01):
    return np.random.default_rng(seed).normal(0, sd, n)


def target(baseline, run, *, matched=True, primary=False, family="bh-calibrated"):
    """A matched-step target; an unmatched one keeps its (not comparable) run, which must not be compared."""
    return {"family": family, "baseline": baseline["label"], "baseline_family": baseline["family"],
            "target_k": baseline["mean_k"], "param": 0.01, "calibration_k": baseline["mean_k"] + (0 if matched else 0.4),
            "matched": matched, "passes": 1, "reason": None if matched else "not within 0.02 of the target after 8 passes",
            "primary": primary, "run": run}


def test_reduction_and_ratio_direction():
    assert derive.reduction_pct(6.0, 8) == pytest.approx(25.0)
    assert derive.reduction_pct(8.0, 8) == 0.0
    base = base_losses()
    ref = make_run("TopK(k=8)", "topk", 8, base, mean_k=8.0)
    worse = make_run("BH", "bh-calibrated", 0.05, base + 0.1 + noise(32, 1), mean_k=6.0)
    r = derive.ppl_ratio_ci(worse, ref)
    assert r["ppl_ratio"] == pytest.approx(math.exp(np.mean(0.1 + noise(32, 1))))
    assert 1.0 < r["ratio_ci_low"] < r["ppl_ratio"] < r["ratio_ci_high"]
    assert derive.ppl_ratio_ci(ref, worse)["ppl_ratio"] == pytest.approx(1 / r["ppl_ratio"])
    rows = derive.sweep_table([worse, ref], top_k=8, max_k=8, min_k=1, ref=ref)
    assert rows[0]["reduction_pct"] == pytest.approx(25.0) and rows[1]["reduction_pct"] == 0.0
    assert rows[0]["ppl"] == pytest.approx(math.exp(np.mean(base + 0.1 + noise(32, 1))))
    assert rows[0]["ppl_ratio"] > 1 and rows[1]["ppl_ratio"] == pytest.approx(1.0)
    assert rows[0]["share_at_max_k"] == pytest.approx(5 / 165) and rows[0]["share_at_min_k"] == pytest.approx(10 / 165)


def test_matched_verdicts_direction_outside_primary_and_holm():
    n = 32
    base = base_losses(n)
    tk = {k: make_run(f"TopK(k={k})", "topk", k, base + 0.2 * (8 - k), mean_k=float(k)) for k in range(2, 8)}
    runs = {
        2: make_run("BH@2", "bh-calibrated", 0.001, base + 1.2 - 0.05 + noise(n, 2), mean_k=2.01),  # lower
        3: make_run("BH@3", "bh-calibrated", 0.002, base + 1.0 + 0.05 + noise(n, 3), mean_k=3.0),  # higher
        4: make_run("BH@4", "bh-calibrated", 0.004, base + 0.8 + noise(n, 4, sd=0.05), mean_k=4.0),  # no difference
        5: make_run("BH@5", "bh-calibrated", 0.03, base + 0.6 + 0.02 + noise(n, 5), mean_k=5.0),  # primary, higher
    }
    # raw p just under 0.05, not significant after Holm with the other tests in the family
    d6 = noise(n, 6, sd=0.05)
    d6 = d6 - d6.mean() + 2.2 * d6.std(ddof=1) / math.sqrt(n)
    runs[6] = make_run("BH@6", "bh-calibrated", 0.09, base + 0.4 + d6, mean_k=6.0)
    matched = {"tolerance": 0.02, "targets": [
        target(tk[2], runs[2]), target(tk[3], runs[3]), target(tk[4], runs[4]),
        target(tk[5], runs[5], primary=True), target(tk[6], runs[6]),
        target(tk[7], make_run("BH@7.4", "bh-calibrated", 0.3, base - 0.5, mean_k=7.4), matched=False),
    ]}
    v = derive.matched_verdicts(matched, list(tk.values()), documents=None)
    grid = {r["baseline"]: r for r in v["grid"]}
    assert [r["word"] for r in v["grid"]] == ["wins", "loses", "ties", "ties", "outside"]
    assert grid["TopK(k=2)"]["comparison"]["decision"] == "lower"
    assert grid["TopK(k=3)"]["comparison"]["verdict"].startswith("BH@3 has significantly higher loss per token")
    assert grid["TopK(k=7)"]["comparison"] is None and "not within" in grid["TopK(k=7)"]["reason"]
    six = grid["TopK(k=6)"]["comparison"]
    assert six["t_pvalue"] < 0.05 <= six["p_adjusted"] and not six["significant"]
    # the family is the four tested grid comparisons, Holm-adjusted; the primary stands alone
    assert v["family_size"] == 4 and v["correction"] == "holm"
    tested = [grid[f"TopK(k={k})"]["comparison"] for k in (2, 3, 4, 6)]
    assert [c["p_adjusted"] for c in tested] == pytest.approx(list(holm([c["t_pvalue"] for c in tested])))
    assert all(c["correction"] == "holm" for c in tested)
    p = v["primary"]
    assert p["baseline"] == "TopK(k=5)" and p["word"] == "loses"
    assert p["comparison"]["correction"] == "none" and p["comparison"]["p_adjusted"] == p["comparison"]["t_pvalue"]
    assert p["comparison"]["mean_diff"] == pytest.approx(np.mean(0.02 + noise(n, 5)))
    assert p["eval_k_bh"] == 5.0 and p["eval_k_baseline"] == 5.0


def test_too_few_documents_gives_numbers_not_verdicts():
    n = MIN_DOCUMENTS - 1
    base = base_losses(n)
    tk = make_run("TopK(k=4)", "topk", 4, base, mean_k=4.0)
    bh = make_run("BH", "bh-calibrated", 0.01, base + 0.3 + noise(n, 1), mean_k=4.0)
    v = derive.matched_verdicts({"targets": [target(tk, bh, primary=True)]}, [tk], documents=None)
    c = v["primary"]["comparison"]
    assert c["t_pvalue"] < 1e-10 and not c["significant"] and v["primary"]["word"] == "no verdict"
    assert "too few documents for a verdict" in c["verdict"]


def test_documents_not_windows_are_the_unit():
    """Two windows per document: the test has one pair per document, and the per-document loss pools
    both windows; treating the 40 windows as units would give a different (too small) p-value."""
    docs = [f"d{i // 2}" for i in range(40)]
    rng = np.random.default_rng(7)
    doc_effect = np.repeat(rng.normal(0, 0.05, 20), 2)  # BH's advantage varies between documents
    base = 3.0 + rng.normal(0, 0.3, 40)
    tk = make_run("TopK(k=4)", "topk", 4, base, mean_k=4.0)
    bh = make_run("BH", "bh-calibrated", 0.01, base + 0.02 + doc_effect + rng.normal(0, 0.001, 40), mean_k=4.0)
    ids, per_doc = per_document(np.array(bh["seq_nll"]) / TOKENS, docs)
    assert ids == [f"d{i}" for i in range(20)] and len(per_doc) == 20
    assert document_loss(bh, docs) == pytest.approx(per_doc)
    by_doc = derive.loss_comparison(bh, tk, documents=docs)
    by_window = derive.loss_comparison(bh, tk, documents=None)
    assert by_doc["n"] == 20 and by_window["n"] == 40
    assert by_doc["t_pvalue"] > by_window["t_pvalue"]


def test_statistics_bh_against_the_models_topk():
    n = 30
    base = base_losses(n)
    tk = make_run("TopK(k=8)", "topk", 8, base, mean_k=8.0)
    bh = make_run("BH", "bh-calibrated", 0.05, base + 0.03 + noise(n, 9), mean_k=5.5)
    prompts = [{"bh_loss": 3.0 + 0.1 * i + 0.05, "topk_loss": 3.0 + 0.1 * i} for i in range(10)]
    st = derive.statistics(bh, tk, prompts, top_k=8)
    assert st["documents"]["decision"] == "higher" and st["documents"]["n"] == n
    assert st["expert_reduction_pct"]["mean"] == pytest.approx(31.25)
    assert st["prompts"]["decision"] == "too few documents" and st["prompts"]["unit"] == "prompts"
    assert st["ppl_bh"]["ppl"] > st["ppl_topk"]["ppl"]
    assert st["experts"]["decision"] is not None


def test_frontier_verdicts_use_measured_points_only():
    n = 30
    base = base_losses(n)
    tk = [make_run(f"TopK(k={k})", "topk", k, base + 0.2 * (8 - k), mean_k=float(k)) for k in (3, 4)]
    on_point = make_run("BH-a", "bh-empirical", 0.1, base + 0.8 - 0.05 + noise(n, 1), mean_k=4.02)
    between = make_run("BH-b", "bh-empirical", 0.2, base, mean_k=3.5)
    rows = derive.frontier_verdicts([on_point, between], tk)
    assert rows[0]["verdict"] == "wins" and rows[0]["against"] == "TopK(k=4)"
    assert rows[1]["verdict"] == "outside" and rows[1]["mean_diff"] is None
