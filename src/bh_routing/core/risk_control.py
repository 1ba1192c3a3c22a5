"""Risk control with a finite-sample guarantee: Learn-then-Test with Hoeffding-Bentkus p-values.

Setting (Angelopoulos, Bates, Candès, Jordan & Lei, "Learn then Test: Calibrating predictive
algorithms to achieve risk control", Ann. Appl. Stat. 19(2), 2025; arXiv:2110.01052). A grid of
settings :math:`\\lambda_1, \\dots, \\lambda_m`; for each, a loss :math:`L_i(\\lambda_j) \\in [0, 1]`
on each of n exchangeable calibration units (here: sequences or documents, never tokens) with
risk :math:`R(\\lambda_j) = E\\,L(\\lambda_j)`. Test the null hypotheses

.. math:: H_j : R(\\lambda_j) > \\varepsilon

with valid p-values and a family-wise-error (FWER) controlling procedure at level δ. Every
rejected :math:`H_j` is then a certified setting: with probability at least 1 − δ over the
calibration sample, *all* certified settings have :math:`R(\\lambda_j) \\le \\varepsilon`
simultaneously (LTT, Theorem 1), so any one of them may be chosen afterwards, e.g. the cheapest.

p-value (LTT Sec. 3, "Hoeffding-Bentkus"; Bates, Angelopoulos, Lei, Malik & Jordan 2021, RCPS,
J. ACM 68(6), Sec. 3). With :math:`\\hat R = \\frac1n\\sum_i L_i` and
:math:`h_1(a, b) = a\\log\\frac ab + (1-a)\\log\\frac{1-a}{1-b}`,

.. math::

    p^{HF} = \\exp\\{-n\\, h_1(\\hat R \\wedge \\varepsilon, \\varepsilon)\\}
    \\quad\\text{(Hoeffding 1963, Theorem 1, eq. 2.1)},

    p^{B} = e \\cdot P\\{\\mathrm{Bin}(n, \\varepsilon) \\le \\lceil n \\hat R \\rceil\\}
    \\quad\\text{(Bentkus 2004, "On Hoeffding's inequalities", Ann. Probab. 32(2), Theorem 1.1)},

    p^{HB} = \\min(p^{HF}, p^{B}).

Both bounds hold for any losses in [0, 1] with mean at least ε, so :math:`p^{HB}` is
super-uniform under :math:`H_j`. (Equation numbers differ between the arXiv versions and the
journal version of LTT; the formulas above are the ones implemented.)

FWER procedure: fixed-sequence testing (LTT Sec. 4; Bauer 1991). The grid is ordered *before*
seeing data from the safest setting to the cheapest (BH α large → small, top-k k from the model's
k down, ...); test :math:`H_1, H_2, \\dots` at level δ each and stop at the first p-value above δ.
No Bonferroni factor is paid for the grid size. When several grids (strategy families) are
certified together, :func:`learn_then_test` is called per family at δ/F (Bonferroni across the
F families), which keeps every certified setting of every family simultaneously valid, so that
picking the cheapest family afterwards keeps the guarantee.

This module is numpy/scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "LTTResult",
    "TooFewSequencesError",
    "fixed_sequence_test",
    "hb_pvalue",
    "hb_upper_bound",
    "learn_then_test",
    "min_sequences",
]

# sums of losses within this distance of an integer count as that integer in ⌈n R̂⌉ (float noise
# in a mean of 0/1 losses must not push ⌈n R̂⌉ one up)
_INT_TOL = 1e-9


class TooFewSequencesError(ValueError):
    """Fewer calibration units than any certificate at (ε, δ) needs; ``needed`` says how many."""

    def __init__(self, message: str, *, needed: int, got: int) -> None:
        super().__init__(message)
        self.needed, self.got = needed, got


def _check_level(value, name: str, *, closed_right: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    v = float(value)
    ok = 0.0 < v <= 1.0 if closed_right else 0.0 < v < 1.0
    if not ok or math.isnan(v):
        raise ValueError(f"{name} must be in (0, 1{']' if closed_right else ')'}, got {value}")
    return v


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return int(n)


def _h1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bernoulli KL divergence h1(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b)), 0 log 0 = 0; b in (0, 1)."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(a > 0, a * np.log(a / b), 0.0)
        right = np.where(a < 1, (1 - a) * np.log((1 - a) / (1 - b)), 0.0)
    return left + right


def _successes(risk_sum: np.ndarray) -> np.ndarray:
    """⌈n R̂⌉ from the sum of the losses, robust to float noise at integers."""
    s = np.asarray(risk_sum, dtype=np.float64)
    r = np.round(s)
    return np.where(np.abs(s - r) <= _INT_TOL * np.maximum(1.0, np.abs(s)), r, np.ceil(s))


def hb_pvalue(risk_mean, n: int, epsilon: float) -> np.ndarray:
    """Hoeffding-Bentkus p-value for :math:`H: R > \\varepsilon` from a mean of n losses in [0, 1].

    .. math:: p^{HB} = \\min\\big(\\exp\\{-n h_1(\\hat R \\wedge \\varepsilon, \\varepsilon)\\},\\;
              e\\,P\\{\\mathrm{Bin}(n, \\varepsilon) \\le \\lceil n\\hat R\\rceil\\}\\big)

    (LTT Sec. 3; see the module notes for the sources of each bound.)

    Parameters
    ----------
    risk_mean : float or array_like
        Empirical risk(s) :math:`\\hat R \\in [0, 1]`.
    n : int
        Number of calibration units behind each mean.
    epsilon : float in (0, 1]
        Risk level of the null hypothesis.

    Returns
    -------
    numpy.ndarray
        p-values in [0, 1], the shape of ``risk_mean``.
    """
    n = _check_n(n)
    eps = _check_level(epsilon, "epsilon", closed_right=True)
    r = np.asarray(risk_mean, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any((r < 0) | (r > 1)):
        raise ValueError("risk_mean must be in [0, 1] and finite")
    p = _hb_pvalue(r, n, np.float64(eps))
    return p if r.ndim else np.float64(p)


def _hb_pvalue(r: np.ndarray, n: int, eps) -> np.ndarray:
    """p^HB without checks; ``eps`` a float or an array broadcasting with ``r``, in (0, 1]."""
    eps = np.asarray(eps, dtype=np.float64)
    below = eps < 1.0
    e = np.where(below, eps, 0.5)  # eps = 1: the null R > 1 is impossible, p = 0 (or 1 if R̂ = 1)
    hoeffding = np.exp(-n * _h1(np.minimum(r, e), e))
    bentkus = np.e * stats.binom.cdf(_successes(n * r), n, e)
    p = np.minimum(np.minimum(hoeffding, bentkus), 1.0)
    return np.where(below, p, np.where(r < 1.0, 0.0, 1.0))


def hb_upper_bound(risk_mean, n: int, delta: float) -> np.ndarray:
    """Upper (1 − δ) confidence bound of the risk: the smallest ε whose :func:`hb_pvalue` is ≤ δ.

    :math:`R^+ = \\inf\\{\\varepsilon : p^{HB}(\\hat R; n, \\varepsilon) \\le \\delta\\}` (the
    Hoeffding-Bentkus bound of RCPS, Bates et al. 2021, Sec. 3.1.1); :math:`p^{HB}` is
    non-increasing in ε, so a setting alone is certified at level ε exactly when
    :math:`R^+ \\le \\varepsilon`. Found by bisection on [R̂, 1] (all values at once, 50 halvings,
    the upper end kept: the bound never undercuts the root).

    Returns
    -------
    numpy.ndarray
        Bounds in [R̂, 1], the shape of ``risk_mean``.
    """
    n = _check_n(n)
    d = _check_level(delta, "delta", closed_right=False)
    r = np.asarray(risk_mean, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any((r < 0) | (r > 1)):
        raise ValueError("risk_mean must be in [0, 1] and finite")
    flat = r.reshape(-1)  # (M,)
    lo, hi = flat.copy(), np.ones_like(flat)  # p(lo) > δ (p = 1 at ε = R̂), p(hi) <= δ
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        ok = _hb_pvalue(flat, n, np.maximum(mid, 1e-300)) <= d  # (M,)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    out = hi.reshape(r.shape)
    return out if r.ndim else np.float64(out[()])


def fixed_sequence_test(pvalues, delta: float):
    """Fixed-sequence testing (Bauer 1991; LTT Sec. 4): how many leading hypotheses are rejected.

    Tests :math:`H_1, H_2, \\dots` in the given order, each at level δ, and stops at the first
    p-value above δ; controls the FWER at δ for any order fixed before the data.

    Parameters
    ----------
    pvalues : array_like, shape (m,) or (r, m)
        p-values in test order; a 2-D array holds r independent runs (one per row).

    Returns
    -------
    int or numpy.ndarray of shape (r,)
        J such that :math:`H_1..H_J` are rejected (0: none), per row for a 2-D input.
    """
    d = _check_level(delta, "delta", closed_right=False)
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim not in (1, 2) or np.any(np.isnan(p)):
        raise ValueError("pvalues must be a 1-D or 2-D array without NaN")
    passed = np.cumprod(p <= d, axis=-1)  # (..., m): 1 while every earlier p-value passed
    j = passed.sum(axis=-1)
    return int(j) if p.ndim == 1 else j.astype(np.int64)


def min_sequences(epsilon: float, delta: float) -> int:
    """Fewest calibration units for which any certificate at (ε, δ) is possible.

    Even a zero empirical risk gives :math:`p^{HB} = (1 - \\varepsilon)^n`, so a certificate needs
    :math:`n \\ge \\log\\delta / \\log(1 - \\varepsilon)`.
    """
    eps = _check_level(epsilon, "epsilon", closed_right=True)
    d = _check_level(delta, "delta", closed_right=False)
    if eps == 1.0:
        return 1
    n = max(1, math.ceil(math.log(d) / math.log1p(-eps)))
    while n > 1 and float(hb_pvalue(0.0, n - 1, eps)) <= d:  # guard the float rounding both ways
        n -= 1
    while float(hb_pvalue(0.0, n, eps)) > d:
        n += 1
    return n


@dataclass(frozen=True)
class LTTResult:
    """Learn-then-Test over one ordered grid (everything per grid point, in grid order)."""

    epsilon: float  # risk level
    delta: float  # FWER level used for this grid
    n: int  # calibration units
    risk_mean: np.ndarray  # (m,) empirical risk R̂
    pvalues: np.ndarray  # (m,) Hoeffding-Bentkus p-values of H_j: R > ε
    upper_bounds: np.ndarray  # (m,) (1 - δ) upper confidence bounds R⁺
    num_certified: int  # J: H_1..H_J rejected by fixed-sequence testing
    chosen: int | None  # index of the cheapest certified setting; None if none certified

    @property
    def certified(self) -> np.ndarray:
        """(m,) bool: certified grid points (the first ``num_certified``)."""
        return np.arange(self.risk_mean.size) < self.num_certified


def learn_then_test(risks, *, epsilon: float, delta: float, cost=None) -> LTTResult:
    """Certify settings of an ordered grid: Hoeffding-Bentkus p-values + fixed-sequence testing.

    Parameters
    ----------
    risks : array_like, shape (m, n)
        Loss of each of the m grid settings (ordered safest first) on each of n exchangeable
        calibration units, in [0, 1].
    epsilon : float in (0, 1]
        Risk level: certify :math:`R(\\lambda) \\le \\varepsilon`.
    delta : float in (0, 1)
        FWER level: :math:`P(\\text{some certified setting has } R > \\varepsilon) \\le \\delta`.
    cost : array_like, shape (m,), optional
        Cost of each setting (e.g. mean experts per token); the chosen setting is the certified
        one of least cost (ties: the earlier one). Default: the last certified one.

    Returns
    -------
    LTTResult

    Raises
    ------
    TooFewSequencesError
        If n < :func:`min_sequences` (ε, δ): no setting could be certified even at zero risk.
    """
    eps = _check_level(epsilon, "epsilon", closed_right=True)
    d = _check_level(delta, "delta", closed_right=False)
    x = np.asarray(risks, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"risks must have shape (m, n) with m, n >= 1, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any((x < 0) | (x > 1)):
        raise ValueError("risks must be in [0, 1] and finite")
    m, n = x.shape
    need = min_sequences(eps, d)
    if n < need:
        raise TooFewSequencesError(
            f"too few calibration sequences to certify: got {n}, need at least {need} for "
            f"epsilon={eps:g} at delta={d:g} (even zero risk gives p = (1-epsilon)^n > delta)",
            needed=need,
            got=n,
        )
    risk_mean = x.sum(axis=1) / n  # (m,)
    pvals = hb_pvalue(np.minimum(risk_mean, 1.0), n, eps)  # (m,)
    bounds = hb_upper_bound(np.minimum(risk_mean, 1.0), n, d)  # (m,)
    j = fixed_sequence_test(pvals, d)
    chosen = None
    if j > 0:
        if cost is None:
            chosen = j - 1
        else:
            c = np.asarray(cost, dtype=np.float64)
            if c.shape != (m,) or np.any(np.isnan(c)):
                raise ValueError(f"cost must have shape ({m},) without NaN, got shape {c.shape}")
            chosen = int(np.argmin(c[:j]))
    return LTTResult(eps, d, n, risk_mean, pvals, bounds, j, chosen)
