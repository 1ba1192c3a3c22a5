"""Delete-one-document jackknife, for statistics that are not means of per-document values.

Most statistics of the package are means of one value per document and get Student-t
intervals (:mod:`~bh_routing.analysis.stats`). Some are functions of counts pooled over all
documents (a conditional probability's maximum, a total-variation distance, a ratio of sums of
squares): for those, the jackknife (Quenouille 1956; Tukey 1958; Efron & Stein 1981) leaves one
document out at a time. A statistic here takes document weights ``w`` (R, D) — how often each
document counts in each of R samples (1 = in, 0 = out) — so a sample never copies token arrays.
Unlike a bootstrap, no document is ever counted twice: a duplicated document would pair each of
its tokens with its own copy, and add sampling noise that biases a maximum or a distance upwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats


def document_index(documents: Sequence) -> tuple[np.ndarray, int]:
    """Index 0..D-1 of each unit's document (in order of first appearance) and D."""
    order = {d: i for i, d in enumerate(dict.fromkeys(documents))}
    return np.array([order[d] for d in documents], dtype=np.int64), len(order)


def jackknife(
    statistic: Callable[[np.ndarray], np.ndarray], n_docs: int, *, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point values and delete-one-document jackknife t-intervals of m statistics.

    Parameters
    ----------
    statistic : callable
        ``statistic(w)`` with ``w`` (R, D) document weights returns an array (m, R).
    n_docs : int
        D.
    level : float, keyword-only

    Returns
    -------
    value, ci_low, ci_high : np.ndarray, shape (m,)
        ``value`` at w = 1; interval :math:`\\hat\\theta \\pm t_{D-1,(1+level)/2}\\,\\mathrm{se}` with
        :math:`\\mathrm{se}^2 = \\tfrac{D-1}{D} \\sum_d (\\hat\\theta_{(d)} - \\bar\\theta_{(\\cdot)})^2`.
        NaN intervals with fewer than 2 documents.
    """
    if n_docs < 1:
        raise ValueError(f"n_docs must be >= 1, got {n_docs}")
    value = np.asarray(statistic(np.ones((1, n_docs))), float)[:, 0]  # (m,)
    if n_docs < 2:
        nan = np.full_like(value, math.nan)
        return value, nan, nan.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        loo = np.asarray(statistic(1.0 - np.eye(n_docs)), float)  # (m, D): document d left out
        se = np.sqrt((n_docs - 1) / n_docs * ((loo - loo.mean(axis=1, keepdims=True)) ** 2).sum(axis=1))
    half = float(stats.t.ppf((1 + level) / 2, n_docs - 1)) * se
    return value, value - half, value + half
