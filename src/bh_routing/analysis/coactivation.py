"""Expert co-activation (Muennighoff et al. 2024, "OLMoE", §5: "Co-activation").

For one MoE layer and the (token, expert) choices of a routing rule, the co-activation of
expert j given expert i is

.. math:: P(j \\mid i) = N_{ij} / N_{ii},

with :math:`N_{ij}` the tokens that chose both i and j and :math:`N_{ii}` the tokens that chose
i. OLMoE reads a matrix with few large off-diagonal entries as experts that work alone rather
than in fixed teams. Summary number: the mean over experts i (that were chosen at all) of
:math:`\\max_{j \\ne i} P(j \\mid i)`. Choosing fewer experts per token lowers every
:math:`P(j \\mid i)` by itself, so the same summary is given for independent choice at the
observed rates, :math:`\\max_{j \\ne i} N_{jj} / T`, and the excess over it is what compares
across routing rules. Intervals: delete-one-document jackknife (a maximum is biased upwards
under the bootstrap, which adds noise to every P(j | i)).
"""

from __future__ import annotations

import math

import numpy as np

from .resampling import jackknife


def cooccurrence(chosen: np.ndarray, token_doc: np.ndarray, n_docs: int) -> np.ndarray:
    """(D, E, E) tokens per document that chose both i and j (diagonal: tokens that chose i).

    ``chosen`` (T, E) bool, one MoE layer; ``token_doc`` (T,) document index 0..D-1.
    """
    chosen = np.asarray(chosen, dtype=np.float32)
    e = chosen.shape[1]
    out = np.zeros((n_docs, e, e))
    for c in range(n_docs):
        x = chosen[token_doc == c]  # (T_c, E)
        out[c] = x.T @ x
    return out


def conditional(counts: np.ndarray) -> np.ndarray:
    """P(j | i) = N_ij / N_ii from (…, E, E) co-occurrence counts; rows i never chosen are NaN,
    and so is the diagonal."""
    counts = np.asarray(counts, float)
    diag = np.diagonal(counts, axis1=-2, axis2=-1)[..., :, None]  # (…, E, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(diag > 0, counts / diag, np.nan)  # (…, E, E)
    e = counts.shape[-1]
    p[..., np.arange(e), np.arange(e)] = np.nan
    return p


def _summaries(counts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """(R, E, E) counts, (R,) tokens -> (3, R): mean max P(j|i), the same under independence, excess."""
    e = counts.shape[-1]
    p = conditional(counts)  # (R, E, E)
    used = np.diagonal(counts, axis1=-2, axis2=-1) > 0  # (R, E)
    with np.errstate(invalid="ignore"):
        rowmax = np.where(used, np.nanmax(np.where(np.isnan(p), -np.inf, p), axis=-1), np.nan)  # (R, E)
        rate = np.diagonal(counts, axis1=-2, axis2=-1) / tokens[:, None]  # (R, E) share of tokens choosing j
        others = np.where(np.eye(e, dtype=bool)[None], -np.inf, rate[:, None, :])  # (R, E, E), j != i
        indep = np.where(used, others.max(axis=-1), np.nan)  # (R, E)
        obs, ind = np.nanmean(rowmax, axis=-1), np.nanmean(indep, axis=-1)  # (R,)
    return np.stack([obs, ind, obs - ind])


def coactivation_analysis(
    chosen: dict[str, np.ndarray],
    token_doc: np.ndarray,
    *,
    matrix_layers: list[int] | None = None,
    labels: dict[str, str] | None = None,
) -> dict:
    """Co-activation per layer under several routing rules, with jackknife intervals over documents.

    Parameters
    ----------
    chosen : mapping rule name -> array (L, T, E) bool
        The experts each rule chose per layer and token (e.g. ``{"topk": ..., "bh": ...}``).
    token_doc : array (T,)
        Document index 0..D-1 of every token.
    matrix_layers : list of int, keyword-only
        Layers whose full P(j | i) matrices are returned (default: first, middle, last).
    labels : mapping rule name -> label, keyword-only
        How the sentence names the rules (default: their names).

    Returns
    -------
    dict
        ``per_layer``: per rule and layer the summary, its independence level and the excess, each
        with a CI; ``excess_difference``: per layer the excess of the second rule minus the first
        (CI from the same resamples); ``matrices``: P(j | i) (NaN on the diagonal) of the chosen
        layers per rule.
    """
    token_doc = np.asarray(token_doc, dtype=np.int64)
    n_docs = int(token_doc.max()) + 1
    names = list(chosen)
    num_layers = next(iter(chosen.values())).shape[0]
    if matrix_layers is None:
        matrix_layers = sorted({0, num_layers // 2, num_layers - 1})
    tok = np.bincount(token_doc, minlength=n_docs).astype(float)  # (D,)
    per_layer: dict[str, list[dict]] = {n: [] for n in names}
    differences = []
    matrices: dict[str, dict[str, list]] = {n: {} for n in names}
    for layer in range(num_layers):
        co = {n: cooccurrence(chosen[n][layer], token_doc, n_docs) for n in names}  # (D, E, E) each
        e = co[names[0]].shape[-1]

        def statistic(w):  # (R, D) -> (3 * rules + 1, R)
            out = []
            for n in names:
                counts = (w @ co[n].reshape(n_docs, -1)).reshape(-1, e, e)  # (R, E, E)
                out.append(_summaries(counts, w @ tok))
            rows = np.concatenate(out)  # (3 * rules, R)
            extra = rows[5:6] - rows[2:3] if len(names) > 1 else np.full((1, w.shape[0]), math.nan)
            return np.concatenate([rows, extra])

        value, low, high = jackknife(statistic, n_docs)
        for i, n in enumerate(names):
            sl = slice(3 * i, 3 * i + 3)
            v, lo, hi = value[sl], low[sl], high[sl]
            per_layer[n].append({
                "layer": layer,
                "mean_max_p": float(v[0]), "mean_max_p_ci": [float(lo[0]), float(hi[0])],
                "independent": float(v[1]), "independent_ci": [float(lo[1]), float(hi[1])],
                "excess": float(v[2]), "excess_ci": [float(lo[2]), float(hi[2])],
            })
        if len(names) > 1:
            differences.append({"layer": layer, "diff": float(value[-1]), "ci": [float(low[-1]), float(high[-1])]})
        if layer in matrix_layers:
            for n in names:
                p = conditional(co[n].sum(axis=0))
                matrices[n][str(layer)] = np.round(np.where(np.isnan(p), -1.0, p), 4).tolist()  # -1: diagonal/unused
    summary = {n: {key: float(np.mean([r[key] for r in per_layer[n]])) for key in ("mean_max_p", "independent", "excess")}
               for n in names}
    out = {
        "rules": names,
        "per_layer": per_layer,
        "summary": summary,
        "matrices": matrices,
        "matrix_layers": matrix_layers,
    }
    if len(names) > 1:
        out["excess_difference"] = differences
        a, b = names[0], names[1]
        la, lb = ((labels or {}).get(n, n) for n in (a, b))
        sig = [d for d in differences if d["ci"][0] > 0 or d["ci"][1] < 0]
        up = sum(d["ci"][0] > 0 for d in differences)
        out["sentence"] = (
            f"Mean over experts of the largest P(j | i), averaged over layers: {summary[a]['mean_max_p']:.3f} "
            f"under {la} and {summary[b]['mean_max_p']:.3f} under {lb} (independent choice at the same rates: "
            f"{summary[a]['independent']:.3f} and {summary[b]['independent']:.3f}); the excess over independence "
            f"changes by {summary[b]['excess'] - summary[a]['excess']:+.3f} under {lb}, with a 95% interval excluding 0 "
            f"in {len(sig)} of {num_layers} layers ({up} up, {len(sig) - up} down)."
        )
    return out
