"""The statistics helpers against scipy computed directly, and their wording."""

import numpy as np
import pytest
from scipy import stats

from bh_routing.analysis.stats import load_balance, mean_ci, paired_comparison, perplexity_ci


def test_paired_comparison_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 1.0, 40)
    b = a - 0.5 + rng.normal(0, 0.3, 40)
    r = paired_comparison(a, b, names=("BH", "top-k"), metric="loss", seed=0)
    t = stats.ttest_rel(a, b)
    w = stats.wilcoxon(a, b)
    assert r["t"] == pytest.approx(t.statistic) and r["t_pvalue"] == pytest.approx(t.pvalue)
    assert r["wilcoxon_pvalue"] == pytest.approx(w.pvalue)
    d = a - b
    assert r["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert r["ci_low"] < d.mean() < r["ci_high"]
    assert r["significant"] and r["verdict"].startswith("BH has significantly higher loss than top-k")


def test_not_significant_is_said_plainly():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 12)
    b = a + rng.normal(0, 1, 12)  # pure noise around no difference
    r = paired_comparison(a, b, names=("x", "y"), metric="loss", seed=0)
    assert r["t_pvalue"] > 0.05 and not r["significant"]
    assert r["verdict"].startswith("The loss difference between x and y is not significant")
    same = paired_comparison(a, a.copy(), names=("x", "y"), metric="m", seed=0)
    assert not same["significant"] and "identical" in same["verdict"] and same["t_pvalue"] is None


def test_perplexity_and_mean_ci():
    nll = np.array([10.0, 12.0, 8.0, 11.0])
    tok = np.array([5, 6, 4, 5])
    r = perplexity_ci(nll, tok, seed=0, n_resamples=500)
    assert r["ppl"] == pytest.approx(np.exp(41 / 20))
    assert r["ci_low"] <= r["ppl"] <= r["ci_high"]
    m = mean_ci(np.array([1.0, 2.0, 3.0, 4.0]), seed=0, n_resamples=500)
    assert m["mean"] == 2.5 and m["ci_low"] < 2.5 < m["ci_high"]


def test_load_balance():
    uniform = load_balance(np.full((2, 8), 10))
    assert uniform["mean_cv"] == 0 and uniform["mean_normalized_entropy"] == pytest.approx(1.0)
    skew = load_balance(np.array([[80, 0, 0, 0, 0, 0, 0, 0]]))
    assert skew["mean_normalized_entropy"] == pytest.approx(0.0) and skew["mean_cv"] > 2


def test_token_categories():
    from bh_routing.analysis.experiments import token_category

    assert token_category(" sorted") == "word-start"
    assert token_category("The", at_start=True) == "word-start"
    assert token_category("ems") == "word-piece"
    assert token_category(" 3") == "number" and token_category("3.14") == "number"
    assert token_category("(") == "punctuation" and token_category(" \n") == "whitespace"
    assert token_category("len)") == "mixed"
