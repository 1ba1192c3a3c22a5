"""Paired statistics and bootstrap intervals (scipy.stats), with a plain-language verdict."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def bootstrap_ci(
    data: tuple[np.ndarray, ...], statistic, *, seed: int, n_resamples: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile-BCa bootstrap CI of ``statistic(*data, axis)`` over paired observations."""
    if len(data[0]) < 2:
        return (math.nan, math.nan)
    if all(np.ptp(d) == 0 for d in data):  # constant data: the CI is the point
        v = float(statistic(*[d[None, :] for d in data], axis=-1)[0])
        return (v, v)
    res = stats.bootstrap(
        data,
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def perplexity_ci(nll_sum: np.ndarray, tokens: np.ndarray, *, seed: int, n_resamples: int = 2000) -> dict:
    """Perplexity exp(sum nll / sum tokens) with a bootstrap CI over sequences."""
    nll_sum, tokens = np.asarray(nll_sum, float), np.asarray(tokens, float)

    def ppl(a, b, axis=-1):
        return np.exp(a.sum(axis=axis) / b.sum(axis=axis))

    lo, hi = bootstrap_ci((nll_sum, tokens), ppl, seed=seed, n_resamples=n_resamples)
    return {"ppl": float(np.exp(nll_sum.sum() / tokens.sum())), "ci_low": lo, "ci_high": hi}


def mean_ci(x: np.ndarray, *, seed: int, n_resamples: int = 2000) -> dict:
    """Mean with a bootstrap CI."""
    x = np.asarray(x, float)
    lo, hi = bootstrap_ci((x,), lambda a, axis=-1: a.mean(axis=axis), seed=seed, n_resamples=n_resamples)
    return {"mean": float(x.mean()), "ci_low": lo, "ci_high": hi}


def paired_comparison(
    a: np.ndarray, b: np.ndarray, *, names: tuple[str, str], metric: str, seed: int, alpha: float = 0.05
) -> dict:
    """Compare paired measurements ``a`` and ``b`` (e.g. per-sequence loss under BH and top-k).

    Paired t-test (scipy.stats.ttest_rel), Wilcoxon signed-rank (scipy.stats.wilcoxon), Cohen's
    :math:`d_z = \\bar d / s_d` with :math:`d = a - b`, and a bootstrap 95% CI of the mean
    difference. ``verdict`` says in words whether the difference is significant at ``alpha``.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D of equal length, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    out: dict = {"metric": metric, "a": names[0], "b": names[1], "n": n}
    out["mean_a"], out["mean_b"], out["mean_diff"] = float(a.mean()), float(b.mean()), float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    out["sd_diff"] = _finite(sd)
    if n < 2 or sd == 0 or not math.isfinite(sd):
        out.update(t=None, t_pvalue=None, wilcoxon=None, wilcoxon_pvalue=None, cohens_dz=None)
        out["ci_low"] = out["ci_high"] = out["mean_diff"]
        same = "identical" if np.all(d == 0) else "constant"
        out["significant"] = False
        out["verdict"] = (
            f"{names[0]} and {names[1]} give {same} {metric} differences on all {n} pairs: no test possible."
        )
        return out
    t = stats.ttest_rel(a, b)
    out["t"], out["t_pvalue"] = _finite(t.statistic), _finite(t.pvalue)
    nonzero = d[d != 0]
    if len(nonzero) >= 1:
        w = stats.wilcoxon(a, b, zero_method="wilcox")
        out["wilcoxon"], out["wilcoxon_pvalue"] = _finite(w.statistic), _finite(w.pvalue)
    else:
        out["wilcoxon"], out["wilcoxon_pvalue"] = None, None
    out["cohens_dz"] = float(d.mean() / sd)
    out["ci_low"], out["ci_high"] = bootstrap_ci((d,), lambda x, axis=-1: x.mean(axis=axis), seed=seed)
    sig = out["t_pvalue"] is not None and out["t_pvalue"] < alpha
    out["significant"] = bool(sig)
    direction = "higher" if d.mean() > 0 else "lower"
    ci = f"95% CI [{out['ci_low']:.4g}, {out['ci_high']:.4g}]"
    if sig:
        out["verdict"] = (
            f"{names[0]} has significantly {direction} {metric} than {names[1]} "
            f"(mean difference {d.mean():.4g}, {ci}, paired t p={out['t_pvalue']:.3g}, "
            f"Wilcoxon p={out['wilcoxon_pvalue']:.3g}, d_z={out['cohens_dz']:.2f}, n={n})."
        )
    else:
        out["verdict"] = (
            f"The {metric} difference between {names[0]} and {names[1]} is not significant "
            f"(mean difference {d.mean():.4g}, {ci}, paired t p={out['t_pvalue']:.3g}, n={n})."
        )
    return out


def load_balance(counts: np.ndarray) -> dict:
    """Load balance of expert counts (L, E): coefficient of variation and normalised entropy per layer."""
    counts = np.asarray(counts, float)
    share = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)  # (L, E)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(share > 0, share * np.log(share), 0.0), axis=1)  # (L,)
    mean = counts.mean(axis=1)
    cv = np.where(mean > 0, counts.std(axis=1) / np.where(mean > 0, mean, 1), np.nan)
    e = counts.shape[1]
    return {
        "cv_per_layer": cv.tolist(),
        "entropy_per_layer": ent.tolist(),
        "normalized_entropy_per_layer": (ent / math.log(e)).tolist(),
        "mean_cv": float(np.nanmean(cv)),
        "mean_normalized_entropy": float(np.mean(ent / math.log(e))),
    }
