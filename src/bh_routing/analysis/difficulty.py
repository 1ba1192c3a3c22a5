"""Does BH give hard tokens more experts? Per-token k against difficulty, with cluster intervals.

The premise of variable-k routing (Huang et al. 2024, "Harder tasks need more experts") is that
tokens the model finds hard need more experts. Per token we pair the number of experts a
strategy chooses (mean over MoE layers, and per layer) with three measures of difficulty of the
unrouted model at the same position: its next-token loss, the entropy of its predictive
distribution, and the entropy of the router's own distribution over experts.

Association is Spearman's ρ over all tokens (:func:`scipy.stats.spearmanr`), with a percentile
interval from a cluster bootstrap over sequences (:mod:`~bh_routing.analysis.resampling`): each
resample is a multiset of whole sequences, and ρ is recomputed exactly on its tokens (mid-ranks
of the resampled tokens, then Pearson's r of the ranks). Tokens are never resampled one by one.

Verdict rule, fixed before looking at any number (:func:`premise_verdict`). Primary endpoint: ρ
between BH's k̂ (mean over layers) and the next-token loss. With ρ_min = 0.1 (the smallest
correlation called "small"):

- **supported**: the interval's lower end is above 0 and ρ ≥ ρ_min;
- **not supported**: the interval's upper end is below ρ_min (no association of even small
  size, or a negative one);
- **inconclusive**: anything else.

"BH tracks difficulty better than top-p / weight ratio" is read off the interval of the
difference ρ_BH − ρ_other on the same resamples (better when it excludes 0 from above).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from .resampling import cluster_bootstrap

RHO_MIN = 0.1
VERDICT_RULE = (
    "Primary endpoint: Spearman ρ between BH's k̂ (mean over MoE layers) and the unrouted model's "
    "next-token loss, with a 95% cluster-bootstrap interval over sequences. Supported: the interval "
    f"lies above 0 and ρ ≥ {RHO_MIN}; not supported: the interval's upper end is below {RHO_MIN}; "
    "inconclusive: otherwise."
)
_CHUNK = 64  # resamples ranked at once (memory: chunk × tokens × variables floats)


class _Ranks:
    """Centred mid-ranks of one variable's tokens in any cluster resample, without copying tokens.

    With ``w`` (R, C) the times each cluster is drawn, a token's mid-rank among the resampled
    tokens is (weight of smaller values) + (weight of equal values + 1) / 2, weights summed over
    the distinct values (``A`` (C, G): tokens of cluster c holding the g-th smallest value). The
    mean mid-rank of a sample of m tokens is (m + 1) / 2 whatever the ties, so centring needs no
    pass over the tokens.
    """

    def __init__(self, x: np.ndarray, token_cluster: np.ndarray, n_clusters: int) -> None:
        values, self.inverse = np.unique(x, return_inverse=True)  # (G,), (n,)
        self.constant = len(values) < 2
        self.dense = len(values) <= 4 * n_clusters  # few distinct values: sum clusters by matrix
        if self.dense:
            self.A = np.zeros((n_clusters, len(values)))  # (C, G)
            np.add.at(self.A, (token_cluster, self.inverse), 1.0)
        else:  # many: walk the tokens in value order, summing each run of ties
            order = np.argsort(self.inverse, kind="stable")  # (n,)
            self.sorted_cluster = token_cluster[order]  # (n,)
            self.starts = np.flatnonzero(np.r_[True, np.diff(self.inverse[order]) != 0])  # (G,)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        if self.dense:
            wg = w @ self.A  # (R, G): resampled tokens per distinct value
        else:
            wg = np.add.reduceat(w[:, self.sorted_cluster], self.starts, axis=1)  # (R, G)
        m = wg.sum(axis=1, keepdims=True)  # (R, 1) tokens in the resample
        centred = np.cumsum(wg, axis=1) - wg / 2.0 - m / 2.0  # (R, G): mid-rank - (m + 1) / 2
        return np.take(centred, self.inverse, axis=1)  # (R, n)


def spearman_table(
    variables: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    token_cluster: np.ndarray,
    *,
    differences: Sequence[tuple[int, int]] = (),
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict]:
    """Spearman ρ of token pairs with cluster-bootstrap percentile intervals, on shared resamples.

    Parameters
    ----------
    variables : mapping name -> array (n,)
        Per-token values (every array over the same n tokens).
    pairs : sequence of (x name, y name)
    token_cluster : array (n,) of int
        The cluster (sequence or document) id 0..C-1 of every token.
    differences : sequence of (i, j), keyword-only
        Also ρ(pairs[i]) − ρ(pairs[j]), on the same resamples.
    n_resamples, seed, level : keyword-only
        Bootstrap settings (see :func:`~bh_routing.analysis.resampling.cluster_bootstrap`).

    Returns
    -------
    list of dict
        One row per pair, then one per difference: ``rho`` (for pairs, equal to
        ``scipy.stats.spearmanr``), ``ci_low``, ``ci_high``; NaN where a variable is constant.
    """
    token_cluster = np.asarray(token_cluster, dtype=np.int64)
    n_clusters = int(token_cluster.max()) + 1 if token_cluster.size else 0
    names = sorted({name for pair in pairs for name in pair})
    ranks = {name: _Ranks(np.asarray(variables[name]), token_cluster, n_clusters) for name in names}

    def statistic(w: np.ndarray) -> np.ndarray:  # (R, C) -> (pairs + differences, R)
        out = np.full((len(pairs) + len(differences), w.shape[0]), math.nan)
        for start in range(0, w.shape[0], _CHUNK):
            wc = w[start : start + _CHUNK]  # (r, C)
            tw = wc[:, token_cluster]  # (r, n) token weights
            d = {name: rk(wc) for name, rk in ranks.items() if not rk.constant}  # (r, n) centred ranks
            wd = {name: tw * v for name, v in d.items()}  # (r, n) weighted
            ss = {name: np.einsum("rn,rn->r", wd[name], d[name]) for name in d}  # (r,) weighted sums of squares
            for i, (x, y) in enumerate(pairs):
                if x in d and y in d:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        out[i, start : start + len(wc)] = np.einsum("rn,rn->r", wd[x], d[y]) / np.sqrt(ss[x] * ss[y])
        for k, (i, j) in enumerate(differences):
            out[len(pairs) + k] = out[i] - out[j]
        return out

    _, low, high = cluster_bootstrap(statistic, n_clusters, n_resamples=n_resamples, seed=seed, level=level)
    rows = []
    for i, (x, y) in enumerate(pairs):
        point = math.nan
        if not (ranks[x].constant or ranks[y].constant):
            point = float(stats.spearmanr(variables[x], variables[y]).statistic)
        rows.append({"x": x, "y": y, "rho": point, "ci_low": float(low[i]), "ci_high": float(high[i])})
    for d, (i, j) in enumerate(differences):
        m = len(pairs) + d
        rows.append({"a": pairs[i], "b": pairs[j], "diff": rows[i]["rho"] - rows[j]["rho"],
                     "ci_low": float(low[m]), "ci_high": float(high[m])})
    return rows


def binned_means(
    x: np.ndarray,
    values: Mapping[str, np.ndarray],
    token_cluster: np.ndarray,
    *,
    bins: int = 10,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Mean of each of ``values`` per quantile bin of ``x`` (deciles by default), with cluster CIs.

    Bin edges are the pooled quantiles of ``x`` (fixed across resamples); ties at an edge go to
    the lower bin. Returns ``edges`` (bins + 1), ``x_mean`` and ``tokens`` per bin, and per value
    name ``mean``, ``ci_low``, ``ci_high`` (bins,).
    """
    x = np.asarray(x, float)
    token_cluster = np.asarray(token_cluster, dtype=np.int64)
    n_clusters = int(token_cluster.max()) + 1
    edges = np.quantile(x, np.linspace(0, 1, bins + 1))
    b = np.clip(np.searchsorted(edges, x, side="left") - 1, 0, bins - 1)  # (n,) bin of each token
    count = np.zeros((n_clusters, bins))  # (C, bins)
    np.add.at(count, (token_cluster, b), 1.0)
    sums = {}
    for name, v in values.items():
        s = np.zeros((n_clusters, bins))
        np.add.at(s, (token_cluster, b), np.asarray(v, float))
        sums[name] = s
    xs = np.zeros((n_clusters, bins))
    np.add.at(xs, (token_cluster, b), x)
    names = list(values)

    def statistic(w):  # (R, C) -> (names * bins, R)
        with np.errstate(invalid="ignore", divide="ignore"):
            den = w @ count  # (R, bins)
            return np.concatenate([(w @ sums[n]) / den for n in names], axis=1).T

    value, low, high = cluster_bootstrap(statistic, n_clusters, n_resamples=n_resamples, seed=seed, level=level)
    tokens = count.sum(axis=0)
    out = {
        "edges": edges.tolist(),
        "tokens": tokens.tolist(),
        "x_mean": (xs.sum(axis=0) / np.maximum(tokens, 1)).tolist(),
        "values": {},
    }
    for i, name in enumerate(names):
        sl = slice(i * bins, (i + 1) * bins)
        out["values"][name] = {"mean": value[sl].tolist(), "ci_low": low[sl].tolist(), "ci_high": high[sl].tolist()}
    return out


def premise_verdict(rho: float, ci_low: float, ci_high: float, *, rho_min: float = RHO_MIN) -> str:
    """"supported", "not supported" or "inconclusive" by the rule of the module notes."""
    if not all(math.isfinite(v) for v in (rho, ci_low, ci_high)):
        return "inconclusive"
    if ci_low > 0 and rho >= rho_min:
        return "supported"
    if ci_high < rho_min:
        return "not supported"
    return "inconclusive"


def _fmt_ci(r: dict, key: str = "rho") -> str:
    return f"{r[key]:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"


def _point(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def difficulty_analysis(
    k: Mapping[str, np.ndarray],
    difficulty: Mapping[str, np.ndarray],
    router_entropy: np.ndarray,
    token_cluster: np.ndarray,
    *,
    primary: str = "bh",
    compare: Sequence[str] = (),
    point_only: Sequence[str] = (),
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Experts per token against difficulty for several strategies, with a verdict for ``primary``.

    Parameters
    ----------
    k : mapping strategy name -> array (L, n)
        Experts chosen per MoE layer and token.
    difficulty : mapping name -> array (n,)
        Per-token difficulty of the unrouted model, e.g. ``{"loss": ..., "entropy": ...}``; the
        verdict uses ``"loss"``.
    router_entropy : array (L, n)
        Entropy of the router distribution per layer and token (nats); its layer mean is a
        difficulty too, and each layer's own entropy is paired with that layer's k.
    token_cluster : array (n,)
        Cluster id (sequence or document) of every token.
    primary : str, keyword-only
        The strategy the verdict is about.
    compare : sequence of str, keyword-only
        Strategies whose ρ is compared with ``primary``'s on the same resamples.
    point_only : sequence of str, keyword-only
        Strategies reported without intervals (robustness rows; saves time).

    Returns
    -------
    dict
        ``spearman`` (strategy × difficulty, layer-mean k), ``per_layer`` (``primary``'s k per
        layer, point estimates), ``comparisons`` (ρ differences), ``deciles`` (mean k
        per decile of each difficulty, with CIs), ``verdict`` and ``verdict_text``.
    """
    num_layers = router_entropy.shape[0]
    diffs = {**{d: np.asarray(v, float) for d, v in difficulty.items()}, "router_entropy": router_entropy.mean(axis=0)}
    kmean = {s: np.asarray(ks, float).mean(axis=0) for s, ks in k.items()}
    variables = {**{f"d:{d}": v for d, v in diffs.items()}, **{f"k:{s}": v for s, v in kmean.items()}}
    with_ci = [s for s in k if s not in point_only]
    pairs = [(f"k:{s}", f"d:{d}") for s in with_ci for d in diffs]
    index = {p: i for i, p in enumerate(pairs)}
    differences = [(index[(f"k:{primary}", f"d:{d}")], index[(f"k:{o}", f"d:{d}")]) for o in compare for d in diffs]
    rows = iter(spearman_table(variables, pairs, token_cluster, differences=differences, n_resamples=n_resamples, seed=seed))
    ci = {pair: next(rows) for pair in pairs}
    nan_ci = {"ci_low": math.nan, "ci_high": math.nan}
    spearman = []
    for s in k:
        for d in diffs:
            r = ci.get((f"k:{s}", f"d:{d}"))
            point = r["rho"] if r else _point(kmean[s], diffs[d])
            spearman.append({"strategy": s, "difficulty": d, "rho": point, **({key: r[key] for key in nan_ci} if r else nan_ci)})
    per_layer = []  # point estimates: each layer's k against each difficulty (the layer's own router entropy)
    for layer in range(num_layers):
        kl = np.asarray(k[primary][layer], float)
        for d in diffs:
            y = router_entropy[layer] if d == "router_entropy" else diffs[d]
            per_layer.append({"layer": layer, "difficulty": d, "rho": _point(kl, y)})
    comparisons = []
    for o in compare:
        for d in diffs:
            r = next(rows)
            comparisons.append({"strategy": primary, "other": o, "difficulty": d, **{key: r[key] for key in ("diff", "ci_low", "ci_high")}})
    deciles = {d: binned_means(diffs[d], kmean, token_cluster, n_resamples=n_resamples, seed=seed) for d in diffs}
    prim = next(r for r in spearman if r["strategy"] == primary and r["difficulty"] == "loss")
    verdict = premise_verdict(prim["rho"], prim["ci_low"], prim["ci_high"])
    n_clusters = int(np.max(token_cluster)) + 1
    text = (
        f"{verdict.capitalize()}: Spearman ρ between {primary}'s experts per token and the next-token "
        f"loss is {_fmt_ci(prim)} (95% cluster-bootstrap CI, {n_clusters} sequences, {len(token_cluster)} tokens)."
    )
    for c in comparisons:
        if c["difficulty"] != "loss" or not math.isfinite(c["diff"]):
            continue
        if c["ci_low"] > 0:
            word = "tracks the loss better than"
        elif c["ci_high"] < 0:
            word = "tracks the loss worse than"
        else:
            word = "is not distinguishable from"
        text += f" {primary} {word} {c['other']} (ρ difference {_fmt_ci(c, 'diff')})."
    return {
        "rule": VERDICT_RULE,
        "rho_min": RHO_MIN,
        "tokens": int(len(token_cluster)),
        "clusters": n_clusters,
        "primary": primary,
        "spearman": spearman,
        "per_layer": per_layer,
        "comparisons": comparisons,
        "deciles": deciles,
        "verdict": verdict,
        "verdict_text": text,
    }


def loss_attribution(
    mass_dropped: np.ndarray,
    loss_increase: np.ndarray,
    token_cluster: np.ndarray,
    *,
    top_share: float = 0.1,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Where the loss goes: is a token's loss increase under BH larger where more router mass was dropped?

    ``mass_dropped`` (n,): the router probability mass of the model's top-k minus that of BH's
    chosen experts (mean over layers); ``loss_increase`` (n,): the token's loss under BH minus
    under top-k. Reports Spearman ρ, the mean loss increase per decile of dropped mass, and the
    mean increase of the ``top_share`` of tokens with the most mass dropped against the rest
    (difference with a cluster-bootstrap CI). The damage is called concentrated when that
    difference's interval lies above 0.
    """
    mass_dropped, loss_increase = np.asarray(mass_dropped, float), np.asarray(loss_increase, float)
    token_cluster = np.asarray(token_cluster, dtype=np.int64)
    n_clusters = int(token_cluster.max()) + 1
    rho = spearman_table({"mass": mass_dropped, "dloss": loss_increase}, [("mass", "dloss")], token_cluster,
                         n_resamples=n_resamples, seed=seed)[0]
    deciles = binned_means(mass_dropped, {"loss_increase": loss_increase}, token_cluster, n_resamples=n_resamples, seed=seed)
    top = mass_dropped > np.quantile(mass_dropped, 1 - top_share)  # (n,)
    parts = np.zeros((n_clusters, 4))  # (C, [sum top, n top, sum rest, n rest])
    np.add.at(parts, (token_cluster, 0), np.where(top, loss_increase, 0.0))
    np.add.at(parts, (token_cluster, 1), top.astype(float))
    np.add.at(parts, (token_cluster, 2), np.where(top, 0.0, loss_increase))
    np.add.at(parts, (token_cluster, 3), (~top).astype(float))

    def statistic(w):  # (R, C) -> (3, R): top mean, rest mean, difference
        s = w @ parts  # (R, 4)
        with np.errstate(invalid="ignore", divide="ignore"):
            a, b = s[:, 0] / s[:, 1], s[:, 2] / s[:, 3]
        return np.stack([a, b, a - b])

    value, low, high = cluster_bootstrap(statistic, n_clusters, n_resamples=n_resamples, seed=seed)
    concentrated = bool(low[2] > 0)
    pct = round(100 * top_share)
    sentence = (
        f"The {pct}% of tokens where BH dropped the most router mass lose {value[0]:+.3f} nats on average "
        f"against {value[1]:+.3f} for the rest (difference {value[2]:+.3f}, 95% CI [{low[2]:+.3f}, {high[2]:+.3f}]; "
        f"Spearman ρ(mass dropped, loss increase) = {_fmt_ci(rho)}): the damage "
        + ("is concentrated where most mass is dropped." if concentrated else "is not shown to concentrate where most mass is dropped.")
    )
    return {
        "mean_mass_dropped": float(mass_dropped.mean()),
        "mean_loss_increase": float(loss_increase.mean()),
        "spearman": {k: rho[k] for k in ("rho", "ci_low", "ci_high")},
        "top_share": top_share,
        "top_mean": float(value[0]), "top_ci": [float(low[0]), float(high[0])],
        "rest_mean": float(value[1]), "rest_ci": [float(low[1]), float(high[1])],
        "difference": float(value[2]), "difference_ci": [float(low[2]), float(high[2])],
        "concentrated": concentrated,
        "deciles": deciles,
        "sentence": sentence,
    }
