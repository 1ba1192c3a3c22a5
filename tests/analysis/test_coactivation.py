"""Expert co-activation P(j | i) on routings with a known answer."""

import math

import numpy as np
import pytest

from bh_routing.analysis.coactivation import coactivation_analysis, conditional, cooccurrence

# 4 experts, 4 tokens: {0, 1}, {0, 1}, {0, 2}, {3}
HAND = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)


def test_conditional_by_hand():
    counts = cooccurrence(HAND, np.zeros(4, dtype=int), 1)[0]
    assert counts.tolist() == [[3, 2, 1, 0], [2, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    p = conditional(counts)
    assert p[0, 1] == pytest.approx(2 / 3) and p[0, 2] == pytest.approx(1 / 3) and p[0, 3] == 0
    assert p[1, 0] == 1 and p[2, 0] == 1 and p[3, 0] == 0
    assert all(math.isnan(p[i, i]) for i in range(4))


def test_summary_by_hand_and_independence_level():
    chosen = {"a": HAND[None], "b": HAND[None]}
    out = coactivation_analysis(chosen, np.array([0, 0, 1, 1]))
    row = out["per_layer"]["a"][0]
    assert row["mean_max_p"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)
    # independent choice at rates (3/4, 1/2, 1/4, 1/4): largest other rate per expert
    assert row["independent"] == pytest.approx((0.5 + 0.75 + 0.75 + 0.75) / 4)
    assert row["excess"] == pytest.approx(row["mean_max_p"] - row["independent"])
    assert out["excess_difference"][0]["diff"] == 0  # same routing under both names
    m = np.array(out["matrices"]["a"]["0"])
    assert m[0, 1] == pytest.approx(2 / 3, abs=1e-4) and m[0, 0] == -1  # stored to 4 decimals


def test_fixed_teams_against_independent_choice():
    # experts come in fixed pairs (2i, 2i+1): P(partner | i) = 1; independent choice of 2 out of 8: far less
    rng = np.random.default_rng(0)
    t, e = 400, 8
    team = rng.integers(0, 4, size=t)
    teams = np.zeros((t, e), dtype=bool)
    teams[np.arange(t), 2 * team] = teams[np.arange(t), 2 * team + 1] = True
    rand = np.zeros((t, e), dtype=bool)
    for i in range(t):
        rand[i, rng.choice(e, 2, replace=False)] = True
    out = coactivation_analysis({"teams": teams[None], "random": rand[None]}, np.arange(t) // 20)
    assert out["per_layer"]["teams"][0]["mean_max_p"] == 1.0
    assert out["per_layer"]["random"][0]["excess"] == pytest.approx(0, abs=0.15)
    assert out["excess_difference"][0]["ci"][1] < 0  # random has far less co-activation than teams
    assert "4 of 1" not in out["sentence"] and "in 1 of 1 layers (0 up, 1 down)" in out["sentence"]
