"""Cluster bootstrap: resample whole sequences (or documents), never single tokens.

Tokens of one sequence are not exchangeable (they share a context and a topic); sequences are.
A cluster bootstrap (Davison & Hinkley 1997, §3.8; Field & Welsh 2007) therefore draws C clusters
with replacement out of the C observed ones and recomputes the statistic on every token of the
drawn clusters. A resample is fully described by how often each cluster was drawn, a weight
vector w ∈ {0, 1, …, C}^C with Σ w = C; the statistics of this package take those weights, so
a resample never copies token arrays. Resampling and the interval come from
:func:`scipy.stats.bootstrap` (percentile method), run on the cluster indices 0..C-1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats

_BATCH = 250  # resamples per call of the statistic (bounds its memory)


def cluster_ids(labels) -> tuple[np.ndarray, int]:
    """Consecutive ids 0..C-1 (in order of first appearance) for per-unit cluster labels, and C."""
    labels = list(labels)
    first: dict = {}
    ids = np.array([first.setdefault(lab, len(first)) for lab in labels], dtype=np.int64)  # (n,)
    return ids, len(first)


def _weights(idx: np.ndarray, n_clusters: int) -> np.ndarray:
    """(R, C') drawn cluster indices -> (R, C) float64 draw counts."""
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    w = np.zeros((idx.shape[0], n_clusters))
    np.add.at(w, (rows, idx.reshape(-1)), 1.0)
    return w


def cluster_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_clusters: int,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point values and percentile bootstrap CIs of statistics of cluster-weighted data.

    Parameters
    ----------
    statistic : callable
        ``statistic(w)`` with ``w`` of shape (R, C), the number of times each of the C clusters
        is in each of R samples, returns an array (m, R): m statistics per sample. The observed
        data is ``w = 1``.
    n_clusters : int
        C, the number of clusters (sequences or documents).
    n_resamples : int, keyword-only
    seed : int, keyword-only
        Seeds the resampling (the same seed draws the same clusters for every statistic).
    level : float, keyword-only
        Confidence level of the two-sided percentile interval.

    Returns
    -------
    value, ci_low, ci_high : np.ndarray, shape (m,)
        NaN intervals with fewer than 2 clusters.
    """
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    value = np.asarray(statistic(np.ones((1, n_clusters))), float)[:, 0]  # (m,)
    if n_clusters < 2:
        nan = np.full_like(value, math.nan)
        return value, nan, nan.copy()

    def stat(idx, axis=-1):
        idx = np.moveaxis(np.asarray(idx), axis, -1)  # (..., C)
        lead = idx.shape[:-1]
        flat = idx.reshape(-1, idx.shape[-1]).astype(np.int64)  # (R, C)
        out = np.asarray(statistic(_weights(flat, n_clusters)), float)  # (m, R)
        return out.reshape((out.shape[0],) + lead)

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # a statistic NaN or constant: NaN CI
        res = stats.bootstrap(
            (np.arange(n_clusters),),
            stat,
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=level,
            method="percentile",
            batch=_BATCH,
            rng=np.random.default_rng(seed),
        )
    low = np.atleast_1d(np.asarray(res.confidence_interval.low, float))
    high = np.atleast_1d(np.asarray(res.confidence_interval.high, float))
    return value, low, high


def cluster_jackknife(
    statistic: Callable[[np.ndarray], np.ndarray], n_clusters: int, *, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point values and delete-one-cluster jackknife normal intervals (Efron & Stein 1981).

    For statistics that a bootstrap would bias: a resample that draws a cluster twice pairs each
    of its tokens with its own copy. The jackknife leaves one cluster out at a time (weights 1,
    one 0), so no token is ever duplicated. Standard error
    :math:`\\sqrt{\\tfrac{C-1}{C} \\sum_c (\\hat\\theta_{(c)} - \\bar\\theta)^2}`, interval
    :math:`\\hat\\theta \\pm z_{(1+level)/2}\\,\\mathrm{se}`. ``statistic`` as in
    :func:`cluster_bootstrap`. NaN intervals with fewer than 2 clusters.
    """
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    value = np.asarray(statistic(np.ones((1, n_clusters))), float)[:, 0]  # (m,)
    if n_clusters < 2:
        nan = np.full_like(value, math.nan)
        return value, nan, nan.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        loo = np.asarray(statistic(1.0 - np.eye(n_clusters)), float)  # (m, C): cluster c left out
        se = np.sqrt((n_clusters - 1) / n_clusters * ((loo - loo.mean(axis=1, keepdims=True)) ** 2).sum(axis=1))
    z = stats.norm.ppf(0.5 + level / 2)
    return value, value - z * se, value + z * se
