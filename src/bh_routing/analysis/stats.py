"""Statistics over documents: t-intervals, paired tests, Holm's correction and the one verdict rule.

The unit of analysis is the **document** (a held-out file): every quantity is first reduced to
one number per document (e.g. mean next-token loss over the document's windows), and every
interval and test treats the documents as an i.i.d. sample. Tokens and windows of one document
are never treated as independent.

Intervals are Student-t intervals of a mean over documents,
:math:`\\bar x \\pm t_{n-1, 1-\\gamma/2}\\, s/\\sqrt n`. They are used everywhere, for three
reasons: (1) every statistic reported is a mean of per-document values (perplexity is
:math:`\\exp` of the mean per-document loss, a perplexity ratio :math:`\\exp` of a mean loss
difference), so the interval is exact under normality and asymptotically valid otherwise;
(2) the interval of a paired difference excludes 0 exactly when the paired t-test rejects, so the
interval and the verdict never disagree; (3) its coverage is checked by simulation in
``tests/analysis/test_stats.py`` (skewed per-document differences, n = 20 and 32), where the
percentile bootstrap the project used before under-covered (93 % at n = 32, 85 % at n = 6).

**The verdict rule** (:func:`decide`, used by every summary, table and command):

1. fewer than :data:`MIN_DOCUMENTS` documents → no verdict, only the numbers
   ("too few documents for a verdict");
2. otherwise a two-sided paired t-test over documents gives p; within a family of comparisons
   p is Holm-adjusted (Holm 1979, :func:`holm`), a single pre-registered comparison uses p as is;
3. *significant* ⇔ adjusted p < :data:`SIGNIFICANCE`; the direction is the sign of the mean
   difference.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

#: Level of every test (two-sided) and 1 - level of every interval.
SIGNIFICANCE = 0.05
#: Below this many documents no verdict is given (t-interval coverage is checked by simulation from
#: n = 20 up; the quick run has 6 documents).
MIN_DOCUMENTS = 20
#: The multiple-comparison correction of every family of comparisons.
CORRECTION = "holm"
#: What :func:`decide` returns.
VERDICTS = ("lower", "higher", "no significant difference", "too few documents")
TOO_FEW = "too few documents for a verdict"


def _finite(x) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def t_interval(x: np.ndarray, *, level: float = 1 - SIGNIFICANCE) -> dict:
    """Mean of ``x`` (one value per document) with its Student-t interval and one-sample t-test.

    Parameters
    ----------
    x : array, shape (n,)
        One value per document.
    level : float, default 0.95
        Confidence level.

    Returns
    -------
    dict
        ``mean``, ``sd`` (ddof=1), ``n``, ``ci_low``, ``ci_high``
        (:math:`\\bar x \\pm t_{n-1,(1+\\text{level})/2}\\, s/\\sqrt n`), ``t`` and two-sided ``pvalue``
        of H0: mean = 0 (as scipy.stats.ttest_1samp). With n < 2 or zero spread the interval is the
        point and the test is undefined (None).
    """
    x = np.asarray(x, float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"x must be 1-D and non-empty, got shape {x.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n, mean = len(x), float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    out = {"mean": mean, "sd": _finite(sd), "n": n}
    if n < 2 or not sd > 0:
        return {**out, "ci_low": mean, "ci_high": mean, "t": None, "pvalue": None}
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se
    t = mean / se
    p = float(2 * stats.t.sf(abs(t), n - 1))  # = scipy.stats.ttest_1samp(x, 0).pvalue
    return {**out, "ci_low": mean - half, "ci_high": mean + half, "t": t, "pvalue": p}


def mean_ci(x: np.ndarray, *, level: float = 1 - SIGNIFICANCE) -> dict:
    """Mean over documents with its t-interval: ``{"mean", "ci_low", "ci_high", "n"}``."""
    r = t_interval(x, level=level)
    return {k: r[k] for k in ("mean", "ci_low", "ci_high", "n")}


def perplexity_ci(doc_loss: np.ndarray, *, level: float = 1 - SIGNIFICANCE) -> dict:
    """Perplexity :math:`\\exp(\\bar\\ell)` of per-document mean losses :math:`\\ell_d` (nats/token).

    Every document weighs the same; the interval is :math:`\\exp` of the t-interval of
    :math:`\\bar\\ell` (exp is monotone, so the coverage carries over).
    """
    r = t_interval(doc_loss, level=level)
    return {"ppl": math.exp(r["mean"]), "ci_low": math.exp(r["ci_low"]), "ci_high": math.exp(r["ci_high"]), "n": r["n"]}


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), controlling the family-wise error rate.

    :math:`\\tilde p_{(i)} = \\max_{j \\le i} \\min\\{1, (m - j + 1)\\, p_{(j)}\\}` for the sorted
    p-values :math:`p_{(1)} \\le \\dots \\le p_{(m)}`, returned in the input order. Rejecting
    :math:`\\tilde p < \\alpha` is Holm's procedure at level α (valid under any dependence).
    """
    p = np.asarray(pvalues, float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("pvalues must be in [0, 1]")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])  # (m - j + 1) p_(j), j = 1..m
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def decide(mean_diff: float, p_adjusted: float | None, *, n: int, alpha: float = SIGNIFICANCE,
           min_documents: int = MIN_DOCUMENTS) -> str:
    """The one verdict rule (module docstring): one of :data:`VERDICTS`.

    ``mean_diff`` is mean(a - b) over documents, ``p_adjusted`` its (adjusted) two-sided p-value.
    "lower" means a is significantly lower than b.
    """
    if n < min_documents:
        return "too few documents"
    if p_adjusted is None or not p_adjusted < alpha:
        return "no significant difference"
    return "lower" if mean_diff < 0 else "higher"


def paired_comparison(
    a: np.ndarray, b: np.ndarray, *, names: tuple[str, str], metric: str, unit: str = "documents",
    alpha: float = SIGNIFICANCE, p_adjusted: float | None = None, correction: str = "none",
) -> dict:
    """Compare paired per-document values ``a`` and ``b`` (e.g. loss under BH and under top-k).

    Paired t-test over documents (scipy.stats.ttest_rel, which is the one-sample test of
    :math:`d = a - b`), the t-interval of mean d, Cohen's :math:`d_z = \\bar d / s_d`, and the
    Wilcoxon signed-rank p-value as a robustness check only (it never decides). ``verdict`` (a
    sentence) and ``decision`` follow :func:`decide` with ``p_adjusted`` (the raw p when None,
    i.e. a single comparison; give the family's adjusted p and ``correction`` otherwise).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a and b must be 1-D of equal, non-zero length, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    ti = t_interval(d, level=1 - alpha)
    out: dict = {"metric": metric, "a": names[0], "b": names[1], "n": n, "unit": unit}
    out["mean_a"], out["mean_b"], out["mean_diff"] = float(a.mean()), float(b.mean()), ti["mean"]
    out["sd_diff"], out["ci_low"], out["ci_high"] = ti["sd"], ti["ci_low"], ti["ci_high"]
    out["t"], out["t_pvalue"] = ti["t"], ti["pvalue"]
    out["cohens_dz"] = ti["mean"] / ti["sd"] if ti["sd"] else None
    out["wilcoxon_pvalue"] = (
        float(stats.wilcoxon(a, b, zero_method="wilcox").pvalue) if ti["pvalue"] is not None and np.count_nonzero(d) else None
    )
    return finish_verdict(out, p_adjusted=ti["pvalue"] if p_adjusted is None else p_adjusted,
                          correction=correction, alpha=alpha)


def finish_verdict(out: dict, *, p_adjusted: float | None, correction: str, alpha: float = SIGNIFICANCE) -> dict:
    """Set ``p_adjusted``, ``correction``, ``decision``, ``significant`` and the ``verdict`` sentence of a
    :func:`paired_comparison` result (after a family's p-values were adjusted)."""
    n, names, metric, unit = out["n"], (out["a"], out["b"]), out["metric"], out.get("unit", "documents")
    out["p_adjusted"], out["correction"] = p_adjusted, correction
    decision = decide(out["mean_diff"], p_adjusted, n=n, alpha=alpha)
    out["decision"] = decision
    out["significant"] = decision in ("lower", "higher")
    ci = f"95% CI {out['ci_low']:.4g} to {out['ci_high']:.4g}" if alpha == 0.05 else (
        f"{100 * (1 - alpha):g}% CI {out['ci_low']:.4g} to {out['ci_high']:.4g}")
    p = "p undefined" if out["t_pvalue"] is None else f"paired t p={out['t_pvalue']:.3g}"
    if correction != "none" and p_adjusted is not None:
        p += f", {correction}-adjusted p={p_adjusted:.3g}"
    numbers = f"mean difference {out['mean_diff']:.4g}, {ci}, {p}, n={n} {unit}"
    if decision == "too few documents":
        out["verdict"] = (f"{metric}, {names[0]} minus {names[1]}: {numbers}; {TOO_FEW} "
                          f"(fewer than {MIN_DOCUMENTS} {unit}).")
    elif out["significant"]:
        out["verdict"] = f"{names[0]} has significantly {decision} {metric} than {names[1]} ({numbers})."
    elif out["t_pvalue"] is None:
        same = "identical" if out["mean_diff"] == 0 and not out["sd_diff"] else "constant"
        out["verdict"] = f"{names[0]} and {names[1]} give {same} {metric} differences on all {n} {unit}: no test possible."
    else:
        out["verdict"] = f"No significant {metric} difference between {names[0]} and {names[1]} ({numbers})."
    return out


def _raw_p(c: dict) -> float | None:
    return c["pvalue"] if c.get("test") == "mcnemar_exact" else c["t_pvalue"]


def adjust_family(comparisons: list[dict], *, alpha: float = SIGNIFICANCE) -> list[dict]:
    """Holm-adjust the raw p-values of a family of :func:`paired_comparison` / :func:`mcnemar_exact`
    results in place and re-decide each one; comparisons without a p-value keep ``p_adjusted`` None."""
    tested = [c for c in comparisons if _raw_p(c) is not None]
    adjusted = holm([_raw_p(c) for c in tested]) if tested else []
    for c, p in zip(tested, adjusted):
        if c.get("test") == "mcnemar_exact":
            _mcnemar_verdict(c, p_adjusted=float(p), correction=CORRECTION, alpha=alpha)
        else:
            finish_verdict(c, p_adjusted=float(p), correction=CORRECTION, alpha=alpha)
    for c in comparisons:
        if _raw_p(c) is None:
            finish_verdict(c, p_adjusted=None, correction=CORRECTION, alpha=alpha)
    return comparisons


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


def mcnemar_exact(a, b, *, names: tuple[str, str], metric: str, task: str, alpha: float = SIGNIFICANCE) -> dict:
    r"""Exact McNemar test of paired 0/1 outcomes ``a`` (strategy) and ``b`` (baseline), one per document.

    Discordant documents: ``only_a`` (right only under ``a``) and ``only_b`` (right only under
    ``b``), m = only_a + only_b. Under H0 (equal accuracy) :math:`\mathrm{only\_a} \sim
    \mathrm{Bin}(m, 1/2)`; two-sided ``scipy.stats.binomtest`` (McNemar 1947, exact form). Also the
    share of the discordant documents that favour ``a`` with its exact (Clopper-Pearson) 95% CI,
    from the same binomial model as the test. The verdict follows :func:`decide` (no verdict below
    :data:`MIN_DOCUMENTS` documents); :func:`adjust_family` re-decides it with a family's adjusted p.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a and b must be 1-D of equal, non-zero length, got {a.shape} and {b.shape}")
    n = len(a)
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    m = only_a + only_b
    ma, mb = float(a.mean()), float(b.mean())
    p, share, lo, hi = 1.0, None, None, None
    if m:
        test = stats.binomtest(only_a, m, 0.5)
        ci = test.proportion_ci(confidence_level=0.95, method="exact")
        p, share, lo, hi = float(test.pvalue), only_a / m, float(ci.low), float(ci.high)
    out = {
        "test": "mcnemar_exact", "task": task, "metric": metric, "a": names[0], "b": names[1], "n": n, "mean_a": ma,
        "mean_b": mb, "mean_diff": ma - mb, "only_a": only_a, "only_b": only_b, "share_a": share, "share_ci_low": lo,
        "share_ci_high": hi, "pvalue": p,
    }
    return _mcnemar_verdict(out, p_adjusted=p, correction="none", alpha=alpha)


def _mcnemar_verdict(out: dict, *, p_adjusted: float, correction: str, alpha: float = SIGNIFICANCE) -> dict:
    task, metric, names, n = out["task"], out["metric"], (out["a"], out["b"]), out["n"]
    ma, mb, diff, m = out["mean_a"], out["mean_b"], out["mean_diff"], out["only_a"] + out["only_b"]
    # accuracy: higher is better, so "lower" from decide() on b - a means a is more accurate
    decision = decide(-diff, p_adjusted if m else None, n=n, alpha=alpha)
    out.update(p_adjusted=p_adjusted, correction=correction, decision=decision,
               significant=decision in ("lower", "higher"))
    if m == 0:
        out["verdict"] = (
            f"{task}, {metric}: {names[0]} and {names[1]} are right and wrong on exactly the same {n} documents "
            f"({ma:.3f} both): no difference to test."
        )
        return out
    padj = f", {correction}-adjusted p={p_adjusted:.3g}" if correction != "none" else ""
    detail = (
        f"({ma:.3f} vs {mb:.3f}, difference {diff:+.3f}; they differ on {m} of {n} documents, {out['only_a']} in favour "
        f"of {names[0]}, {out['only_b']} of {names[1]}: share {out['share_a']:.2f}, exact 95% CI "
        f"{out['share_ci_low']:.2f}-{out['share_ci_high']:.2f}; exact McNemar p={out['pvalue']:.3g}{padj})"
    )
    if decision == "too few documents":
        out["verdict"] = f"{task}, {metric}: {names[0]} vs {names[1]} {detail}; {TOO_FEW} (fewer than {MIN_DOCUMENTS} documents)."
    elif out["significant"]:
        out["verdict"] = (
            f"{task}, {metric}: {names[0]} is significantly {'more' if diff > 0 else 'less'} accurate than "
            f"{names[1]} {detail}."
        )
    else:
        out["verdict"] = f"{task}, {metric}: no significant difference between {names[0]} and {names[1]} at {alpha:g} {detail}."
    return out
