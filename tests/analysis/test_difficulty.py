"""Within-document Spearman over documents, decile means, the premise verdict and the jackknife."""

import math

import numpy as np
import pytest
from scipy import stats

from bh_routing.analysis.difficulty import (
    binned_means,
    difficulty_analysis,
    document_spearman,
    loss_attribution,
    premise_verdict,
)
from bh_routing.analysis.resampling import document_index, jackknife


def test_document_index_in_order_of_appearance():
    ids, n = document_index(["b", "b", "a", "c", "a"])
    assert ids.tolist() == [0, 0, 1, 2, 1] and n == 3


def test_jackknife_of_a_mean_is_the_t_interval():
    # the jackknife SE of a mean equals s / sqrt(n) exactly, so the interval is the t-interval
    x = np.random.default_rng(2).normal(size=15)
    value, low, high = jackknife(lambda w: ((w @ x) / w.sum(axis=1))[None], 15)
    ref = stats.ttest_1samp(x, 0).confidence_interval(0.95)
    assert value[0] == pytest.approx(x.mean())
    assert (low[0], high[0]) == pytest.approx((ref.low, ref.high))
    assert np.isnan(jackknife(lambda w: w.sum(axis=1)[None], 1)[1][0])


def test_document_spearman_is_scipy_within_each_document():
    rng = np.random.default_rng(1)
    doc = np.repeat([0, 1, 2], 20)
    x, y = rng.normal(size=60), rng.normal(size=60)
    x[doc == 2] = 3.0  # constant within document 2: undefined
    rho = document_spearman(x, y, doc, 3)
    assert rho[0] == pytest.approx(stats.spearmanr(x[:20], y[:20]).statistic)
    assert rho[1] == pytest.approx(stats.spearmanr(x[20:40], y[20:40]).statistic)
    assert math.isnan(rho[2])


def test_binned_means_by_hand():
    x = np.arange(100.0)
    doc = np.arange(100) % 10  # 10 documents, each with tokens in every bin
    out = binned_means(x, {"twice": 2 * x}, doc, bins=4)
    assert out["edges"] == pytest.approx([0, 24.75, 49.5, 74.25, 99])
    assert out["tokens"] == [25, 25, 25, 25]  # 0..24, 25..49, 50..74, 75..99
    assert out["x_mean"] == pytest.approx([12, 37, 62, 87])
    v = out["values"]["twice"]
    # bin 0 of document d holds its tokens x <= 24: d, d + 10, d + 20 (the last only for d <= 4)
    first = [np.mean([2 * t for t in range(100) if t % 10 == d and t <= 24]) for d in range(10)]
    ref = stats.ttest_1samp(first, 0).confidence_interval(0.95)
    assert v["mean"][0] == pytest.approx(np.mean(first)) and v["documents"] == [10] * 4
    assert (v["ci_low"][0], v["ci_high"][0]) == pytest.approx((ref.low, ref.high))


@pytest.mark.parametrize(
    "rho, lo, hi, n, expected",
    [(0.3, 0.2, 0.4, 32, "supported"), (0.05, 0.01, 0.09, 32, "not supported"), (-0.2, -0.3, -0.1, 32, "not supported"),
     (0.08, 0.02, 0.14, 32, "inconclusive"), (0.15, -0.01, 0.3, 32, "inconclusive"), (math.nan, 0, 1, 32, "inconclusive"),
     (0.3, 0.2, 0.4, 19, "too few documents")],
)
def test_premise_verdict_rule(rho, lo, hi, n, expected):
    assert premise_verdict(rho, lo, hi, n=n) == expected


def test_difficulty_analysis_verdicts_on_known_associations():
    rng = np.random.default_rng(5)
    docs, per, layers = 30, 60, 3
    doc = np.repeat(np.arange(docs), per)
    loss = rng.gamma(2.0, size=doc.size)
    entropy = loss + rng.normal(size=doc.size)
    router_entropy = rng.normal(size=(layers, doc.size))
    tracks = np.clip(np.round(2 + loss + rng.normal(0, 0.5, size=(layers, doc.size))), 1, 8)  # k rises with loss
    blind = rng.integers(1, 9, size=(layers, doc.size)).astype(float)  # k ignores difficulty
    out = difficulty_analysis({"bh": tracks, "other": blind}, {"loss": loss, "entropy": entropy}, router_entropy, doc,
                              compare=("other",))
    assert out["verdict"] == "supported" and out["verdict_text"].startswith("The within-document Spearman ρ between bh")
    loss_cmp = next(c for c in out["comparisons"] if c["difficulty"] == "loss")
    assert loss_cmp["decision"] == "higher" and loss_cmp["correction"] == "holm" and loss_cmp["n"] == docs
    assert len(out["per_layer"]) == layers * 3
    dec = out["deciles"]["loss"]["values"]["bh"]["mean"]
    assert dec[-1] > dec[0]
    row = next(r for r in out["spearman"] if r["strategy"] == "bh" and r["difficulty"] == "loss")
    ref = stats.ttest_1samp(document_spearman(tracks.mean(0), loss, doc, docs), 0).confidence_interval(0.95)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ref.low, ref.high))
    assert row["pooled_rho"] == pytest.approx(stats.spearmanr(tracks.mean(0), loss).statistic)
    out2 = difficulty_analysis({"bh": blind}, {"loss": loss, "entropy": entropy}, router_entropy, doc)
    assert out2["verdict"] == "not supported"
    few = difficulty_analysis({"bh": tracks[:, : 5 * per]}, {"loss": loss[: 5 * per], "entropy": entropy[: 5 * per]},
                              router_entropy[:, : 5 * per], doc[: 5 * per])
    assert few["verdict"] == "too few documents"


def test_loss_attribution_finds_concentrated_damage():
    rng = np.random.default_rng(6)
    doc = np.repeat(np.arange(30), 40)
    mass = rng.uniform(0, 0.5, size=doc.size)
    out = loss_attribution(mass, 0.4 * mass + rng.normal(0, 0.05, size=doc.size), doc)
    assert out["concentrated"] and out["difference"]["ci_low"] > 0 and out["spearman"]["mean"] > 0.5
    assert "is concentrated" in out["sentence"]
    flat = loss_attribution(mass, rng.normal(0, 0.05, size=doc.size), doc)
    assert not flat["concentrated"] and "not shown" in flat["sentence"]
