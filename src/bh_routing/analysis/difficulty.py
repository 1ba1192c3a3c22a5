"""Does BH give hard tokens more experts? Per-token k against difficulty, over documents.

The premise of variable-k routing (Huang et al. 2024, "Harder tasks need more experts") is that
tokens the model finds hard need more experts. Per token we pair the number of experts a
strategy chooses (mean over MoE layers, and per layer) with three measures of difficulty of the
unrouted model at the same position: its next-token loss, the entropy of its predictive
distribution, and the entropy of the router's own distribution over experts.

Statistics follow :mod:`~bh_routing.analysis.stats`: the document is the unit. Per document d,
Spearman's :math:`\\rho_d` between k and difficulty over the document's tokens
(:func:`scipy.stats.spearmanr`); the estimate is the mean over documents with its Student-t
interval (:func:`~bh_routing.analysis.stats.t_interval`). This is the *within-document*
association, so a document that is both hard and routed to many experts as a whole does not
count as evidence; the correlation of all tokens pooled is reported beside it, without an
interval. Comparisons between strategies are paired t-tests of :math:`\\rho_d` over documents,
Holm-adjusted (:func:`~bh_routing.analysis.stats.adjust_family`).

Verdict rule, fixed before looking at any number (:func:`premise_verdict`). Primary endpoint: the
mean within-document ρ between BH's k̂ (mean over layers) and the next-token loss. With
ρ_min = 0.1 (the smallest correlation called "small"):

- fewer than :data:`~bh_routing.analysis.stats.MIN_DOCUMENTS` documents: **too few documents**;
- **supported**: the interval's lower end is above 0 and the mean ρ ≥ ρ_min;
- **not supported**: the interval's upper end is below ρ_min (no association of even small size,
  or a negative one);
- **inconclusive**: anything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from .stats import MIN_DOCUMENTS, adjust_family, paired_comparison, t_interval

RHO_MIN = 0.1
READABLE = {"loss": "next-token loss", "entropy": "predictive entropy", "router_entropy": "router entropy"}
VERDICT_RULE = (
    "Primary endpoint: the mean over documents of the within-document Spearman ρ between BH's k̂ "
    "(mean over MoE layers) and the unrouted model's next-token loss, with its 95% t-interval over "
    f"documents. Supported: the interval lies above 0 and ρ ≥ {RHO_MIN}; not supported: the "
    f"interval's upper end is below {RHO_MIN}; inconclusive: otherwise; no verdict with fewer than "
    f"{MIN_DOCUMENTS} documents."
)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ, NaN when either side is constant (undefined)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def document_spearman(x: np.ndarray, y: np.ndarray, token_doc: np.ndarray, n_docs: int) -> np.ndarray:
    """(D,) Spearman ρ of x and y within each document (NaN where undefined)."""
    return np.array([_spearman(x[token_doc == d], y[token_doc == d]) for d in range(n_docs)])


def _interval(values: np.ndarray) -> dict:
    """t-interval over the documents where ``values`` is defined."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    r = t_interval(v)
    return {k: r[k] for k in ("mean", "ci_low", "ci_high", "n")}


def binned_means(x: np.ndarray, values: Mapping[str, np.ndarray], token_doc: np.ndarray, *, bins: int = 10) -> dict:
    """Mean of each of ``values`` per quantile bin of ``x`` (deciles by default), over documents.

    Bin edges are the pooled quantiles of ``x``; a value equal to an edge goes to the lower bin.
    Per bin, each document's mean over its tokens in the bin, then the t-interval over the
    documents with tokens there. Returns ``edges`` (bins + 1), ``x_mean`` and ``tokens`` per bin,
    and per value name ``mean``, ``ci_low``, ``ci_high``, ``documents`` (bins,).
    """
    x = np.asarray(x, float)
    token_doc = np.asarray(token_doc, dtype=np.int64)
    n_docs = int(token_doc.max()) + 1
    edges = np.quantile(x, np.linspace(0, 1, bins + 1))
    b = np.clip(np.searchsorted(edges, x, side="left") - 1, 0, bins - 1)  # (n,) bin of each token
    count = np.zeros((n_docs, bins))  # (D, bins)
    np.add.at(count, (token_doc, b), 1.0)
    tokens = count.sum(axis=0)
    xs = np.bincount(b, weights=x, minlength=bins)
    out = {"edges": edges.tolist(), "tokens": tokens.tolist(),
           "x_mean": np.where(tokens > 0, xs / np.maximum(tokens, 1), np.nan).tolist(), "values": {}}
    for name, v in values.items():
        s = np.zeros((n_docs, bins))
        np.add.at(s, (token_doc, b), np.asarray(v, float))
        with np.errstate(invalid="ignore", divide="ignore"):
            doc_means = s / count  # (D, bins), NaN where a document has no token in the bin
        rows = [_interval(doc_means[:, j]) for j in range(bins)]
        out["values"][name] = {key: [r[key] for r in rows] for key in ("mean", "ci_low", "ci_high")}
        out["values"][name]["documents"] = [r["n"] for r in rows]
    return out


def premise_verdict(rho: float, ci_low: float, ci_high: float, *, n: int, rho_min: float = RHO_MIN) -> str:
    """"supported", "not supported", "inconclusive" or "too few documents" (module notes)."""
    if n < MIN_DOCUMENTS:
        return "too few documents"
    if not all(math.isfinite(v) for v in (rho, ci_low, ci_high)):
        return "inconclusive"
    if ci_low > 0 and rho >= rho_min:
        return "supported"
    if ci_high < rho_min:
        return "not supported"
    return "inconclusive"


def _fmt(r: dict, key: str = "mean") -> str:
    return f"{r[key]:+.3f} (95% CI {r['ci_low']:+.3f} to {r['ci_high']:+.3f})"


def difficulty_analysis(
    k: Mapping[str, np.ndarray],
    difficulty: Mapping[str, np.ndarray],
    router_entropy: np.ndarray,
    token_doc: np.ndarray,
    *,
    primary: str = "bh",
    compare: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
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
    token_doc : array (n,)
        Document index 0..D-1 of every token.
    primary : str, keyword-only
        The strategy the verdict is about.
    compare : sequence of str, keyword-only
        Strategies whose per-document ρ is compared with ``primary``'s (paired t, Holm).
    labels : mapping strategy name -> label, keyword-only
        How sentences name the strategies (default: their names).

    Returns
    -------
    dict
        ``spearman`` (strategy × difficulty: mean within-document ρ with t-interval, and the
        pooled ρ), ``per_layer`` (``primary``'s k per layer), ``comparisons``, ``deciles`` (mean k
        per decile of each difficulty, with intervals), ``verdict`` and ``verdict_text`` (the
        numbers behind the verdict).
    """
    token_doc = np.asarray(token_doc, dtype=np.int64)
    n_docs = int(token_doc.max()) + 1
    num_layers = router_entropy.shape[0]
    label = {s: (labels or {}).get(s, s) for s in k}
    diffs = {**{d: np.asarray(v, float) for d, v in difficulty.items()}, "router_entropy": router_entropy.mean(axis=0)}
    kmean = {s: np.asarray(ks, float).mean(axis=0) for s, ks in k.items()}
    per_doc: dict[tuple[str, str], np.ndarray] = {}
    spearman = []
    for s in k:
        for d, y in diffs.items():
            per_doc[(s, d)] = document_spearman(kmean[s], y, token_doc, n_docs)  # (D,)
            spearman.append({"strategy": s, "difficulty": d, **_interval(per_doc[(s, d)]),
                             "pooled_rho": _spearman(kmean[s], y)})
    per_layer = []
    for layer in range(num_layers):
        kl = np.asarray(k[primary][layer], float)
        for d, y in diffs.items():
            y = router_entropy[layer] if d == "router_entropy" else y  # the layer's own router entropy
            per_layer.append({"layer": layer, "difficulty": d, **_interval(document_spearman(kl, y, token_doc, n_docs))})
    comparisons = []
    for o in compare:
        for d in diffs:
            a, b = per_doc[(primary, d)], per_doc[(o, d)]
            ok = np.isfinite(a) & np.isfinite(b)
            if ok.sum() >= 2:
                comparisons.append({"difficulty": d, "strategy": primary, "other": o, **paired_comparison(
                    a[ok], b[ok], names=(label[primary], label[o]), metric=f"within-document Spearman ρ with {READABLE.get(d, d)}")})
    adjust_family(comparisons)
    deciles = {d: binned_means(y, kmean, token_doc) for d, y in diffs.items()}
    prim = next(r for r in spearman if r["strategy"] == primary and r["difficulty"] == "loss")
    verdict = premise_verdict(prim["mean"], prim["ci_low"], prim["ci_high"], n=prim["n"])
    text = (
        f"The within-document Spearman ρ between {label[primary]}'s experts per token and "
        f"the next-token loss is {_fmt(prim)} over {prim['n']} documents; all {len(token_doc)} tokens pooled, "
        f"ρ = {prim['pooled_rho']:+.3f}."
    )
    for c in comparisons:
        if c["difficulty"] == "loss":
            text += f" Against {c['b']}: {c['verdict']}"
    return {
        "rule": VERDICT_RULE,
        "rho_min": RHO_MIN,
        "tokens": int(len(token_doc)),
        "documents": n_docs,
        "primary": primary,
        "spearman": spearman,
        "per_layer": per_layer,
        "comparisons": comparisons,
        "deciles": deciles,
        "verdict": verdict,
        "verdict_text": text,
    }


def loss_attribution(mass_dropped: np.ndarray, loss_increase: np.ndarray, token_doc: np.ndarray, *,
                     top_share: float = 0.1) -> dict:
    """Where the loss goes: is a token's loss increase under BH larger where more router mass was dropped?

    ``mass_dropped`` (n,): the router probability mass of the model's top-k minus that of BH's
    chosen experts (mean over layers); ``loss_increase`` (n,): the token's loss under BH minus
    under top-k. Per document: the mean increase of its tokens among the pooled ``top_share``
    with the most mass dropped minus the mean of its other tokens (documents with both), and the
    within-document Spearman ρ; t-intervals over documents; the mean increase per decile of
    dropped mass. The damage is called concentrated when the difference's interval lies above 0.
    """
    mass_dropped, loss_increase = np.asarray(mass_dropped, float), np.asarray(loss_increase, float)
    token_doc = np.asarray(token_doc, dtype=np.int64)
    n_docs = int(token_doc.max()) + 1
    top = mass_dropped > np.quantile(mass_dropped, 1 - top_share)  # (n,)
    n_top = np.bincount(token_doc, weights=top, minlength=n_docs)
    n_rest = np.bincount(token_doc, weights=~top, minlength=n_docs)
    with np.errstate(invalid="ignore", divide="ignore"):
        top_mean = np.bincount(token_doc, weights=np.where(top, loss_increase, 0), minlength=n_docs) / n_top
        rest_mean = np.bincount(token_doc, weights=np.where(top, 0, loss_increase), minlength=n_docs) / n_rest
    diff = _interval(top_mean - rest_mean)
    rho = _interval(document_spearman(mass_dropped, loss_increase, token_doc, n_docs))
    concentrated = bool(diff["ci_low"] > 0)
    pct = round(100 * top_share)
    sentence = (
        f"Within a document, the tokens among the {pct}% where BH dropped the most router mass lose "
        f"{_fmt(diff)} nats more than the document's other tokens ({diff['n']} documents; within-document "
        f"Spearman ρ(mass dropped, loss increase) {_fmt(rho)}): the damage "
        + ("is concentrated where most mass is dropped." if concentrated else "is not shown to concentrate where most mass is dropped.")
    )
    return {
        "mean_mass_dropped": float(mass_dropped.mean()),
        "mean_loss_increase": float(loss_increase.mean()),
        "top_share": top_share,
        "top_mean": float(loss_increase[top].mean()),
        "rest_mean": float(loss_increase[~top].mean()),
        "difference": diff,
        "spearman": rho,
        "pooled_rho": _spearman(mass_dropped, loss_increase),
        "concentrated": concentrated,
        "deciles": binned_means(mass_dropped, {"loss_increase": loss_increase}, token_doc),
        "sentence": sentence,
    }
