"""Cluster bootstrap, exact resampled Spearman, decile means and the premise verdict."""

import math

import numpy as np
import pytest
from scipy import stats

from bh_routing.analysis.difficulty import (
    _Ranks,
    binned_means,
    difficulty_analysis,
    loss_attribution,
    premise_verdict,
    spearman_table,
)
from bh_routing.analysis.resampling import cluster_bootstrap, cluster_ids, cluster_jackknife


def clustered(seed=0, clusters=8, per=15, slope=1.0, ties=False):
    """x, y over ``clusters`` clusters of ``per`` tokens, y = slope * x + cluster effect + noise."""
    rng = np.random.default_rng(seed)
    cl = np.repeat(np.arange(clusters), per)
    x = rng.normal(size=cl.size) + rng.normal(size=clusters)[cl]
    y = slope * x + rng.normal(size=clusters)[cl] + rng.normal(size=cl.size)
    if ties:
        x = np.round(x)  # few distinct values, many ties
    return x, y, cl


def test_cluster_ids_in_order_of_appearance():
    ids, n = cluster_ids(["b", "b", "a", "c", "a"])
    assert ids.tolist() == [0, 0, 1, 2, 1] and n == 3


def test_cluster_bootstrap_matches_scipy_on_cluster_totals():
    # a ratio of cluster sums: the weighted statistic equals scipy's paired bootstrap of the totals
    rng = np.random.default_rng(3)
    sums, counts = rng.normal(5, 2, size=12), rng.integers(5, 20, size=12).astype(float)

    def weighted(w):  # (R, C) -> (1, R)
        return ((w @ sums) / (w @ counts))[None]

    value, low, high = cluster_bootstrap(weighted, 12, n_resamples=500, seed=7)
    ref = stats.bootstrap(
        (sums, counts), lambda s, c, axis=-1: s.sum(axis=axis) / c.sum(axis=axis), paired=True, vectorized=True,
        n_resamples=500, method="percentile", rng=np.random.default_rng(7),
    )
    assert value[0] == pytest.approx(sums.sum() / counts.sum())
    assert low[0] == pytest.approx(ref.confidence_interval.low, rel=1e-12)
    assert high[0] == pytest.approx(ref.confidence_interval.high, rel=1e-12)


def test_cluster_jackknife_of_a_mean_is_the_standard_error():
    x = np.random.default_rng(2).normal(size=15)
    value, low, high = cluster_jackknife(lambda w: ((w @ x) / w.sum(axis=1))[None], 15)
    se = x.std(ddof=1) / np.sqrt(15)  # the jackknife SE of a mean equals s / sqrt(n) exactly
    assert value[0] == pytest.approx(x.mean())
    assert (high[0] - low[0]) / 2 == pytest.approx(stats.norm.ppf(0.975) * se)
    assert np.isnan(cluster_jackknife(lambda w: w.sum(axis=1)[None], 1)[1][0])


def test_cluster_bootstrap_one_cluster_has_no_interval():
    value, low, high = cluster_bootstrap(lambda w: w.sum(axis=1)[None], 1)
    assert value[0] == 1 and math.isnan(low[0]) and math.isnan(high[0])


@pytest.mark.parametrize("ties", [False, True])
def test_resampled_ranks_are_exact_spearman_of_the_expanded_sample(ties):
    x, y, cl = clustered(seed=1, ties=ties)
    rx, ry = _Ranks(x, cl, 8), _Ranks(y, cl, 8)
    assert rx.dense == ties  # both rank paths are exercised
    rng = np.random.default_rng(0)
    w = rng.multinomial(8, np.full(8, 1 / 8), size=5).astype(float)  # (5, C) cluster draw counts
    dx, dy = rx(w), ry(w)
    tw = w[:, cl]
    for r in range(5):
        keep = np.repeat(np.arange(cl.size), tw[r].astype(int))  # the resampled tokens, copied out
        mine = (tw[r] * dx[r] * dy[r]).sum() / np.sqrt((tw[r] * dx[r] ** 2).sum() * (tw[r] * dy[r] ** 2).sum())
        assert mine == pytest.approx(stats.spearmanr(x[keep], y[keep]).statistic, abs=1e-12)


def test_spearman_table_interval_matches_a_brute_force_cluster_bootstrap():
    x, y, cl = clustered(seed=2, clusters=10, per=12, slope=0.5, ties=True)
    rows = spearman_table({"x": x, "y": y}, [("x", "y")], cl, n_resamples=300, seed=11)
    assert rows[0]["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)

    def brute(idx, axis=-1):  # scipy resamples cluster indices; gather their tokens, call scipy
        keep = np.concatenate([np.flatnonzero(cl == c) for c in idx])
        return stats.spearmanr(x[keep], y[keep]).statistic

    ref = stats.bootstrap((np.arange(10),), brute, vectorized=False, n_resamples=300, method="percentile",
                          rng=np.random.default_rng(11))
    assert rows[0]["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=1e-10)
    assert rows[0]["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=1e-10)


def test_spearman_table_differences_and_constant_variables():
    x, y, cl = clustered(seed=4)
    rows = spearman_table({"x": x, "y": y, "noise": np.random.default_rng(0).normal(size=x.size), "c": np.ones(x.size)},
                          [("x", "y"), ("noise", "y"), ("c", "y")], cl, differences=[(0, 1)], n_resamples=200, seed=1)
    assert math.isnan(rows[2]["rho"]) and math.isnan(rows[2]["ci_low"])
    assert rows[3]["diff"] == pytest.approx(rows[0]["rho"] - rows[1]["rho"])
    assert rows[3]["ci_low"] > 0  # x tracks y, noise does not


def test_binned_means_by_hand():
    x = np.arange(100.0)
    cl = np.arange(100) % 10  # 10 clusters, each with tokens in every bin (a resample never empties one)
    out = binned_means(x, {"twice": 2 * x}, cl, bins=4, n_resamples=100, seed=0)
    assert out["edges"] == pytest.approx([0, 24.75, 49.5, 74.25, 99])
    assert out["tokens"] == [25, 25, 25, 25]  # 0..24, 25..49, 50..74, 75..99
    assert out["values"]["twice"]["mean"] == pytest.approx([24, 74, 124, 174])
    assert out["x_mean"] == pytest.approx([12, 37, 62, 87])
    lo, hi = out["values"]["twice"]["ci_low"], out["values"]["twice"]["ci_high"]
    assert all(a <= m <= b for a, m, b in zip(lo, out["values"]["twice"]["mean"], hi))


@pytest.mark.parametrize(
    "rho, lo, hi, expected",
    [(0.3, 0.2, 0.4, "supported"), (0.05, 0.01, 0.09, "not supported"), (-0.2, -0.3, -0.1, "not supported"),
     (0.08, 0.02, 0.14, "inconclusive"), (0.15, -0.01, 0.3, "inconclusive"), (math.nan, 0, 1, "inconclusive")],
)
def test_premise_verdict_rule(rho, lo, hi, expected):
    assert premise_verdict(rho, lo, hi) == expected


def test_difficulty_analysis_verdicts_on_known_associations():
    rng = np.random.default_rng(5)
    clusters, per, layers = 40, 50, 3
    cl = np.repeat(np.arange(clusters), per)
    loss = rng.gamma(2.0, size=cl.size)
    entropy = loss + rng.normal(size=cl.size)
    router_entropy = rng.normal(size=(layers, cl.size))
    tracks = np.clip(np.round(2 + loss + rng.normal(0, 0.5, size=(layers, cl.size))), 1, 8)  # k rises with loss
    blind = rng.integers(1, 9, size=(layers, cl.size))  # k ignores difficulty
    out = difficulty_analysis({"bh": tracks, "other": blind}, {"loss": loss, "entropy": entropy}, router_entropy, cl,
                              compare=("other",), n_resamples=300, seed=0)
    assert out["verdict"] == "supported" and out["verdict_text"].startswith("Supported")
    assert out["comparisons"][0]["other"] == "other" and out["comparisons"][0]["ci_low"] > 0
    assert len(out["per_layer"]) == layers * 3
    dec = out["deciles"]["loss"]["values"]["bh"]["mean"]
    assert dec[-1] > dec[0]
    out2 = difficulty_analysis({"bh": blind}, {"loss": loss, "entropy": entropy}, router_entropy, cl,
                               n_resamples=300, seed=0)
    assert out2["verdict"] == "not supported"


def test_loss_attribution_finds_concentrated_damage():
    rng = np.random.default_rng(6)
    cl = np.repeat(np.arange(30), 40)
    mass = rng.uniform(0, 0.5, size=cl.size)
    out = loss_attribution(mass, 0.4 * mass + rng.normal(0, 0.05, size=cl.size), cl, n_resamples=300, seed=0)
    assert out["concentrated"] and out["difference_ci"][0] > 0 and out["spearman"]["rho"] > 0.5
    assert "is concentrated" in out["sentence"]
    flat = loss_attribution(mass, rng.normal(0, 0.05, size=cl.size), cl, n_resamples=300, seed=0)
    assert not flat["concentrated"] and "not shown" in flat["sentence"]
