"""Learn-then-Test core: Hoeffding-Bentkus p-values against an independent computation, the upper
bound, fixed-sequence testing, the minimum sample size, FWER and bad inputs."""

import math

import numpy as np
import pytest
from scipy import special, stats

from bh_routing.core.risk_control import (
    TooFewSequencesError,
    fixed_sequence_test,
    hb_pvalue,
    hb_upper_bound,
    learn_then_test,
    min_sequences,
)


def _oracle_hb(rhat: float, n: int, eps: float) -> float:
    """p^HB with exact integer arithmetic for Bentkus and scipy's rel_entr for Hoeffding's h1."""
    a = min(rhat, eps)
    h1 = special.rel_entr(a, eps) + special.rel_entr(1 - a, 1 - eps)
    hoeffding = math.exp(-n * h1)
    x = math.ceil(round(n * rhat, 9))
    cdf = sum(math.comb(n, i) * eps**i * (1 - eps) ** (n - i) for i in range(0, min(x, n) + 1))
    return min(hoeffding, math.e * cdf, 1.0)


@pytest.mark.parametrize(
    "rhat,n,eps",
    [(0.0, 10, 0.1), (0.05, 20, 0.2), (0.1, 50, 0.1), (0.3, 40, 0.2), (0.013, 64, 0.1), (0.5, 7, 0.9), (1.0, 5, 0.5)],
)
def test_hb_pvalue_matches_independent_computation(rhat, n, eps):
    assert float(hb_pvalue(rhat, n, eps)) == pytest.approx(_oracle_hb(rhat, n, eps), rel=1e-9, abs=1e-15)


def test_hb_pvalue_hand_values():
    # zero risk: Hoeffding gives (1 - eps)^n, below Bentkus' e (1 - eps)^n
    assert float(hb_pvalue(0.0, 10, 0.1)) == pytest.approx(0.9**10)
    # at or above eps the p-value is 1 (h1 = 0)
    assert float(hb_pvalue(0.1, 30, 0.1)) == 1.0
    assert float(hb_pvalue(0.4, 30, 0.1)) == 1.0
    # Bentkus is the smaller one at n = 20, R̂ = 0.2, eps = 0.5: e P(Bin(20, 0.5) <= 4)
    bentkus = math.e * stats.binom.cdf(4, 20, 0.5)
    assert float(hb_pvalue(0.2, 20, 0.5)) == pytest.approx(bentkus)
    assert bentkus < math.exp(-20 * (0.2 * math.log(0.2 / 0.5) + 0.8 * math.log(0.8 / 0.5)))
    # eps = 1: every loss is <= 1, the null is impossible
    assert float(hb_pvalue(0.7, 3, 1.0)) == 0.0


def test_hb_pvalue_integer_sums_are_not_pushed_up():
    # 3 ones in 30 losses: ⌈n R̂⌉ must be 3 even though 30 * (3/30) may not be exactly 3.0 in floats
    losses = np.zeros(30)
    losses[:3] = 1.0
    assert float(hb_pvalue(losses.mean(), 30, 0.3)) == pytest.approx(_oracle_hb(0.1, 30, 0.3))


def test_hb_pvalue_is_valid_in_simulation():
    """Losses with mean exactly eps (the boundary of the null): P(p <= delta) <= delta."""
    rng = np.random.default_rng(0)
    n, eps, reps = 40, 0.2, 4000
    for sample in (
        lambda: rng.binomial(1, eps, size=(reps, n)).astype(float),  # Bernoulli: the worst case
        lambda: rng.beta(2.0, 8.0, size=(reps, n)),  # continuous with mean 0.2
    ):
        p = hb_pvalue(sample().mean(axis=1), n, eps)
        for delta in (0.05, 0.1, 0.2):
            assert np.mean(p <= delta) <= delta + 3 * math.sqrt(delta * (1 - delta) / reps)


def test_upper_bound_inverts_the_pvalue_and_covers():
    for rhat, n, delta in [(0.0, 30, 0.1), (0.08, 64, 0.025), (0.3, 20, 0.05)]:
        b = float(hb_upper_bound(rhat, n, delta))
        assert rhat <= b <= 1.0
        assert float(hb_pvalue(rhat, n, min(b, 1.0))) <= delta
        assert float(hb_pvalue(rhat, n, b - 1e-6)) > delta
    assert float(hb_upper_bound(0.0, 30, 0.1)) == pytest.approx(1 - 0.1 ** (1 / 30), abs=1e-8)
    rng = np.random.default_rng(1)
    means = rng.binomial(1, 0.15, size=(1000, 50)).mean(axis=1)
    assert np.mean(hb_upper_bound(means, 50, 0.1) >= 0.15) >= 0.9


def test_fixed_sequence_stops_at_the_first_failure():
    assert fixed_sequence_test([0.01, 0.02, 0.5, 0.01], 0.05) == 2
    assert fixed_sequence_test([0.2, 0.01], 0.05) == 0
    assert fixed_sequence_test([0.01, 0.05], 0.05) == 2  # p <= delta rejects
    assert fixed_sequence_test([], 0.05) == 0


def test_min_sequences():
    n = min_sequences(0.1, 0.1)
    assert n == 22  # 0.9^22 = 0.098 <= 0.1 < 0.9^21 = 0.109
    assert float(hb_pvalue(0.0, n, 0.1)) <= 0.1 < float(hb_pvalue(0.0, n - 1, 0.1))
    assert min_sequences(0.1, 0.025) == math.ceil(math.log(0.025) / math.log(0.9))
    assert min_sequences(1.0, 0.1) == 1


def test_learn_then_test_chooses_the_cheapest_certified():
    rng = np.random.default_rng(2)
    true = np.array([0.0, 0.01, 0.03, 0.2, 0.02])  # the 4th breaks the sequence: the 5th is never tested
    risks = rng.binomial(1, true[:, None], size=(5, 400)).astype(float)
    res = learn_then_test(risks, epsilon=0.1, delta=0.1, cost=[8, 7, 6, 5, 4])
    assert res.num_certified == 3 and res.chosen == 2
    assert res.certified.tolist() == [True, True, True, False, False]
    assert res.pvalues[3] == 1.0 and res.pvalues[4] <= 0.1  # passes alone, but behind a failure
    res = learn_then_test(risks, epsilon=0.1, delta=0.1, cost=[8, 5, 6, 5, 4])
    assert res.chosen == 1  # least cost among the certified, first on ties
    assert learn_then_test(risks, epsilon=0.1, delta=0.1).chosen == 2  # default: the last certified


def test_learn_then_test_controls_fwer_in_simulation():
    """Grid with true risks crossing eps: P(some certified setting has R > eps) <= delta."""
    rng = np.random.default_rng(3)
    true = np.array([0.0, 0.04, 0.08, 0.095, 0.105, 0.12, 0.2])
    eps, delta, n, reps = 0.1, 0.1, 150, 1500
    bad = 0
    for _ in range(reps):
        risks = rng.binomial(1, true[:, None], size=(true.size, n)).astype(float)
        j = fixed_sequence_test(hb_pvalue(risks.mean(axis=1), n, eps), delta)
        bad += bool(np.any(true[:j] > eps))
    assert bad / reps <= delta + 3 * math.sqrt(delta * (1 - delta) / reps)


def test_too_few_sequences_says_how_many():
    with pytest.raises(TooFewSequencesError, match=r"got 21, need at least 22") as info:
        learn_then_test(np.zeros((3, 21)), epsilon=0.1, delta=0.1)
    assert info.value.needed == 22 and info.value.got == 21
    assert learn_then_test(np.zeros((3, 22)), epsilon=0.1, delta=0.1).num_certified == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(epsilon=0.0, delta=0.1), r"epsilon must be in \(0, 1\], got 0.0"),
        (dict(epsilon=1.5, delta=0.1), r"epsilon must be in \(0, 1\], got 1.5"),
        (dict(epsilon=float("nan"), delta=0.1), "epsilon must be in"),
        (dict(epsilon=0.1, delta=1.0), r"delta must be in \(0, 1\), got 1.0"),
        (dict(epsilon=0.1, delta=0.0), r"delta must be in \(0, 1\), got 0.0"),
    ],
)
def test_bad_levels(kwargs, match):
    with pytest.raises(ValueError, match=match):
        learn_then_test(np.zeros((2, 50)), **kwargs)


def test_bad_risks_and_shapes():
    with pytest.raises(ValueError, match=r"risks must be in \[0, 1\]"):
        learn_then_test(np.full((2, 50), 1.2), epsilon=0.1, delta=0.1)
    with pytest.raises(ValueError, match=r"risks must be in \[0, 1\]"):
        learn_then_test(np.full((2, 50), np.nan), epsilon=0.1, delta=0.1)
    with pytest.raises(ValueError, match=r"shape \(m, n\)"):
        learn_then_test(np.zeros(50), epsilon=0.1, delta=0.1)
    with pytest.raises(ValueError, match="cost must have shape"):
        learn_then_test(np.zeros((2, 50)), epsilon=0.1, delta=0.1, cost=[1.0])
    with pytest.raises(TypeError, match="epsilon must be a float"):
        hb_pvalue(0.1, 10, "0.1")
    with pytest.raises(ValueError, match="n must be >= 1"):
        hb_pvalue(0.1, 0, 0.1)
    with pytest.raises(ValueError, match="risk_mean must be in"):
        hb_pvalue(-0.1, 10, 0.1)
