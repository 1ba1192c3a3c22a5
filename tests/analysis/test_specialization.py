"""Domain (TV distance) and vocabulary specialisation against hand computations."""

import numpy as np
import pytest

from bh_routing.analysis.specialization import (
    domain_specialization,
    routed_counts,
    tv_distance,
    vocabulary_specialization,
)


def test_tv_distance_by_hand():
    assert tv_distance([1, 1, 0, 0], [0, 1, 1, 0]) == pytest.approx(0.5)  # shares (.5,.5,0,0) vs (0,.5,.5,0)
    assert tv_distance([2, 2], [5, 5]) == 0  # counts are normalised
    assert tv_distance([[1, 0], [3, 1]], [[0, 1], [1, 3]]).tolist() == pytest.approx([1.0, 0.5])


def test_routed_counts():
    chosen = np.array([[[1, 0], [1, 1], [0, 1]]], dtype=bool)  # (L=1, T=3, E=2)
    assert routed_counts(chosen, np.array([0, 0, 1]), 2).tolist() == [[[2, 1]], [[0, 1]]]


def test_domain_tv_by_hand_with_floor():
    # 4 clusters, 1 layer, 2 experts: prose clusters use expert 0, code clusters expert 1
    counts = np.array([[[4, 0]], [[4, 0]], [[0, 4]], [[0, 4]]], dtype=float)
    mixed = np.array([[[2, 2]], [[2, 2]], [[2, 2]], [[2, 2]]], dtype=float)
    out = domain_specialization({"topk": counts, "bh": mixed}, ["prose", "prose", "code", "code"])
    assert out["per_rule"]["topk"]["tv_per_layer"] == [1.0] and out["per_rule"]["topk"]["floor_mean"] == 0
    assert out["per_rule"]["bh"]["tv_mean"] == 0
    assert out["difference"]["diff"] == -1.0 and "blurs" in out["sentence"]


def test_domain_single_domain_is_skipped():
    out = domain_specialization({"topk": np.ones((2, 1, 3))}, ["text", "text"])
    assert "skipped" in out


def test_vocabulary_deterministic_mapping_is_fully_specialised():
    # token id v always goes to expert v % 4 (and nothing else): N_xe / N_x = 1 for every pair
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 8, size=600)
    chosen = np.zeros((1, 600, 4), dtype=bool)
    chosen[0, np.arange(600), ids % 4] = True
    out = vocabulary_specialization(ids, {"topk": chosen}, np.arange(600) // 30, min_count=5)
    row = out["per_rule"]["topk"]["per_layer"][0]
    assert row["S"] == pytest.approx(1.0) and row["normalized"] == pytest.approx(1.0)
    assert out["per_rule"]["topk"]["expert_spec"][0] == pytest.approx([1, 1, 1, 1])


def test_vocabulary_by_hand():
    # ids [0, 0, 1, 1]; expert 0 takes both 0s and one 1, expert 1 takes the other 1
    ids = np.array([0, 0, 1, 1])
    chosen = np.array([[[1, 0], [1, 0], [1, 0], [0, 1]]], dtype=bool)
    out = vocabulary_specialization(ids, {"r": chosen}, np.array([0, 0, 1, 1]), min_count=2)
    row = out["per_rule"]["r"]["per_layer"][0]
    # S = sum N_xe (N_xe - 1) / (N_x - 1) / pairs = (2*1/1 + 1*0/1 + 1*0/1) / 4
    assert row["S"] == pytest.approx(0.5)
    # r = (3/4, 1/4): S0 = sum r^2 / sum r
    assert row["S0"] == pytest.approx(10 / 16)
    assert row["normalized"] == pytest.approx((0.5 - 10 / 16) / (1 - 10 / 16))
    assert out["per_rule"]["r"]["expert_spec"][0] == pytest.approx([2 / 3, 0])
    assert out["per_rule"]["r"]["expert_chance"][0] == pytest.approx([3 / 4, 1 / 4])
    with pytest.raises(ValueError, match="min_count must be >= 2, got 1"):
        vocabulary_specialization(ids, {"r": chosen}, np.zeros(4, int), min_count=1)


def test_vocabulary_chance_level_matches_routing_that_ignores_the_token():
    rng = np.random.default_rng(1)
    t, e = 6000, 16
    ids = rng.integers(0, 30, size=t)
    rates = rng.uniform(0.05, 0.4, size=e)
    chosen = (rng.uniform(size=(1, t, e)) < rates)  # independent of the token id
    topk = np.zeros((1, t, e), dtype=bool)
    topk[0, np.arange(t), ids % e] = True
    out = vocabulary_specialization(ids, {"topk": topk, "random": chosen}, np.arange(t) // 100)
    rnd = out["per_rule"]["random"]["per_layer"][0]
    assert rnd["S"] == pytest.approx(rnd["S0"], abs=0.005)
    assert abs(rnd["normalized"]) < 0.01 and rnd["normalized_ci"][0] < 0 < rnd["normalized_ci"][1]
    assert out["difference"][0]["ci"][1] < 0 and "blurs" in out["sentence"]
