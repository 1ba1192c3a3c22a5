"""Domain and vocabulary specialisation of experts (Muennighoff et al. 2024, "OLMoE", §5).

**Domain.** Per MoE layer and domain, the share of the domain's routed (token, expert) pairs that
each expert receives; experts specialise when the shares differ between domains. Measured by the
total-variation distance :func:`tv_distance` between two domains' shares, per layer (the
embedded model's card, ``scripts/model_card_stats.py``, uses the same function for top-k), next
to a noise floor: the same distance between two halves of each domain's documents. Fewer
routed pairs raise the floor, so rules are compared by the distance above their floor.

**Vocabulary.** OLMoE's vocabulary specialisation of expert e for token id x is
:math:`N_{x,e} / N_x`, the share of the occurrences of x routed to e (1: x always goes to e).
We use its leave-one-out form, which does not count an occurrence as agreeing with itself:
for a routed pair (occurrence of x, expert e), the chance that another occurrence of x also
went to e, :math:`(N_{x,e} - 1) / (N_x - 1)`. Averaged over an expert's routed pairs,
:math:`s_e = \\sum_x N_{x,e} (N_{x,e} - 1) / (N_x - 1) \\,/\\, \\sum_x N_{x,e}`, and over all pairs
of a layer, :math:`S` (same sums over e too). If the choice did not depend on the token id
(expert e taken with probability :math:`r_e` per token), the expected values are
:math:`s^0_e = r_e` and :math:`S^0 = \\sum_e r_e^2 / \\sum_e r_e`. Fewer experts per token
lower :math:`r_e` and with it the chance level, so rules are compared by the normalised excess
:math:`(S - S^0) / (1 - S^0)`: 0 = no vocabulary specialisation, 1 = every token id always goes
to the same experts. Only token ids seen at least ``min_count`` times enter. Intervals:
delete-one-document jackknife for both measures (a bootstrap would pair duplicated tokens with
their own copies, and adds noise that biases a distance upwards).
"""

from __future__ import annotations

import itertools

import numpy as np

from .resampling import jackknife


def tv_distance(p, q) -> np.ndarray:
    """Total-variation distance between the rows of two (…, E) count or share arrays.

    Each row is normalised to sum 1 first: :math:`\\tfrac12 \\sum_e |p_e / \\sum p - q_e / \\sum q|`.
    """
    p, q = np.asarray(p, float), np.asarray(q, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * np.abs(p / p.sum(-1, keepdims=True) - q / q.sum(-1, keepdims=True)).sum(-1)


def routed_counts(chosen: np.ndarray, token_doc: np.ndarray, n_docs: int) -> np.ndarray:
    """(D, L, E) routed (token, expert) pairs per document, layer and expert from (L, T, E) bool."""
    num_layers, _, e = chosen.shape
    out = np.zeros((n_docs, num_layers, e))
    for c in range(n_docs):
        out[c] = chosen[:, token_doc == c].sum(axis=1)  # (L, E)
    return out


def _halves(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return members[0::2], members[1::2]


def domain_specialization(
    counts: dict[str, np.ndarray],
    doc_domain: list[str],
    *,
    labels: dict[str, str] | None = None,
) -> dict:
    """Per-layer TV distance between domains of the routed-pair shares, per routing rule.

    Parameters
    ----------
    counts : mapping rule name -> array (D, L, E)
        Routed pairs per document (see :func:`routed_counts`).
    doc_domain : list of str, length D
        The domain of every document.
    labels : mapping rule name -> label, keyword-only
        How the sentence names the rules (default: their names).

    Returns
    -------
    dict
        Per rule: ``tv_per_layer`` (with CIs), ``tv_mean`` and the noise floor ``floor_mean``
        (TV between alternate halves of each domain's documents, averaged over domains), with
        CIs; ``difference``: the second rule's mean TV above its floor minus the first's. With more than two
        domains the TV is the mean over domain pairs; with one domain there is nothing to compare.
    """
    domains = sorted(set(doc_domain), key=list(doc_domain).index)
    if len(domains) < 2:
        return {"domains": domains, "skipped": f"one domain ({domains[0] if domains else 'none'}): nothing to compare"}
    names = list(counts)
    doc_domains = np.asarray(doc_domain)
    n_docs, num_layers, _ = counts[names[0]].shape
    members = {d: np.flatnonzero(doc_domains == d) for d in domains}
    pairs = list(itertools.combinations(domains, 2))

    def statistic(w):  # (R, D) -> (rules * (L + 2) + 1, R)
        out = []
        for n in names:
            flat = counts[n].reshape(n_docs, -1)  # (D, L*E)

            def total(idx):
                return (w[:, idx] @ flat[idx]).reshape(w.shape[0], num_layers, -1)  # (R, L, E)

            per_domain = {d: total(members[d]) for d in domains}
            tv = np.mean([tv_distance(per_domain[a], per_domain[b]) for a, b in pairs], axis=0)  # (R, L)
            floor = np.mean([tv_distance(total(h1), total(h2)).mean(axis=1)
                             for d in domains for h1, h2 in [_halves(members[d])]], axis=0)  # (R,)
            out += [tv.T, tv.mean(axis=1)[None], floor[None]]
        rows = np.concatenate(out)  # (rules * (L + 2), R)
        per = num_layers + 2
        if len(names) > 1:  # (TV - floor) of the second rule minus that of the first
            diff = (rows[2 * per - 2] - rows[2 * per - 1]) - (rows[per - 2] - rows[per - 1])
        else:
            diff = np.full(w.shape[0], np.nan)
        return np.concatenate([rows, diff[None]])

    value, low, high = jackknife(statistic, n_docs)
    per = num_layers + 2
    result: dict = {"domains": domains, "rules": names, "per_rule": {}}
    for i, n in enumerate(names):
        o = i * per
        result["per_rule"][n] = {
            "tv_per_layer": value[o : o + num_layers].tolist(),
            "tv_per_layer_ci_low": low[o : o + num_layers].tolist(),
            "tv_per_layer_ci_high": high[o : o + num_layers].tolist(),
            "tv_mean": float(value[o + num_layers]),
            "tv_mean_ci": [float(low[o + num_layers]), float(high[o + num_layers])],
            "floor_mean": float(value[o + num_layers + 1]),
            "floor_mean_ci": [float(low[o + num_layers + 1]), float(high[o + num_layers + 1])],
        }
    if len(names) > 1:
        a, b = names[0], names[1]
        la, lb = ((labels or {}).get(n, n) for n in (a, b))
        d = {"diff": float(value[-1]), "ci": [float(low[-1]), float(high[-1])]}
        result["difference"] = d
        ra, rb = result["per_rule"][a], result["per_rule"][b]
        change = "keeps" if d["ci"][0] <= 0 <= d["ci"][1] else ("sharpens" if d["diff"] > 0 else "blurs")
        result["sentence"] = (
            f"TV distance between {' and '.join(domains)} routing shares, mean over layers: {ra['tv_mean']:.3f} under {la} "
            f"(noise floor {ra['floor_mean']:.3f}) and {rb['tv_mean']:.3f} under {lb} (floor {rb['floor_mean']:.3f}); "
            f"the distance above the floor changes by {d['diff']:+.3f} (95% CI [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]): "
            f"{lb} {change} domain specialisation."
        )
    return result


def _vocab_stats(nxe: np.ndarray, nx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, X, E) pairs per token id and expert, (R, X) occurrences -> (R,) S and S^0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(nx > 1, 1.0 / np.where(nx > 1, nx - 1, 1.0), 0.0)  # (R, X)
        agree = np.einsum("rxe,rxe,rx->r", nxe, nxe - 1, inv)  # (R,) sum of N_xe (N_xe - 1) / (N_x - 1)
        per_expert = (nxe * (nx > 1)[..., None]).sum(axis=1)  # (R, E) pairs of ids seen twice or more
        r = per_expert / (nx * (nx > 1)).sum(axis=1)[:, None]  # (R, E)
        s = agree / per_expert.sum(axis=1)
        s0 = (r**2).sum(axis=1) / r.sum(axis=1)
    return s, s0


def vocabulary_specialization(
    token_ids: np.ndarray,
    chosen: dict[str, np.ndarray],
    token_doc: np.ndarray,
    *,
    min_count: int = 10,
    labels: dict[str, str] | None = None,
) -> dict:
    """OLMoE's vocabulary specialisation per layer and expert, against its chance level.

    Parameters
    ----------
    token_ids : array (T,)
        The token at each routed position.
    chosen : mapping rule name -> array (L, T, E) bool
    token_doc : array (T,)
    min_count : int, keyword-only
        Token ids with fewer occurrences are left out (at least 2).
    labels : mapping rule name -> label, keyword-only
        How the sentence names the rules (default: their names).

    Returns
    -------
    dict
        Per rule and layer ``S``, ``S0`` and ``normalized`` = (S − S0) / (1 − S0) with a jackknife CI;
        per rule the per-expert ``expert_spec``, ``expert_chance`` and ``expert_pairs`` (L, E); the per-layer
        difference of the normalised excess (second rule − first) with CIs.
    """
    if min_count < 2:
        raise ValueError(f"min_count must be >= 2, got {min_count}")
    token_ids = np.asarray(token_ids)
    token_doc = np.asarray(token_doc, dtype=np.int64)
    n_docs = int(token_doc.max()) + 1
    ids, inverse, freq = np.unique(token_ids, return_inverse=True, return_counts=True)
    keep_id = freq >= min_count  # (X_all,)
    keep = keep_id[inverse]  # (T,)
    col = np.cumsum(keep_id)[inverse] - 1  # (T,) column of a kept token's id
    x = int(keep_id.sum())
    if x == 0:
        return {"min_count": min_count, "skipped": f"no token id occurs {min_count} times or more"}
    names = list(chosen)
    num_layers, _, e = chosen[names[0]].shape
    occ = np.zeros((n_docs, x))  # (D, X)
    np.add.at(occ, (token_doc[keep], col[keep]), 1.0)
    per_doc = {}
    for n in names:
        arr = np.zeros((num_layers, n_docs, x, e))  # (L, D, X, E)
        for layer in range(num_layers):
            np.add.at(arr[layer], (token_doc[keep], col[keep]), chosen[n][layer][keep].astype(float))
        per_doc[n] = arr

    def statistic(w):  # (R, D) -> (rules * L * 3 + L, R)
        rows = []
        nx = w @ occ  # (R, X)
        norms = {}
        for n in names:
            for layer in range(num_layers):
                nxe = (w @ per_doc[n][layer].reshape(n_docs, -1)).reshape(-1, x, e)  # (R, X, E)
                s, s0 = _vocab_stats(nxe, nx)
                norm = (s - s0) / (1 - s0)
                norms[(n, layer)] = norm
                rows += [s, s0, norm]
        for layer in range(num_layers):
            rows.append(norms[(names[1], layer)] - norms[(names[0], layer)] if len(names) > 1 else np.full(w.shape[0], np.nan))
        return np.stack(rows)

    value, low, high = jackknife(statistic, n_docs)
    out: dict = {"min_count": min_count, "token_ids": x, "tokens": int(keep.sum()), "rules": names, "per_rule": {}}
    nx_all = occ.sum(axis=0)  # (X,)
    t_all = nx_all.sum()
    for i, n in enumerate(names):
        layers = []
        spec, chance, pairs = [], [], []
        for layer in range(num_layers):
            j = 3 * (i * num_layers + layer)
            layers.append({"layer": layer, "S": float(value[j]), "S0": float(value[j + 1]),
                           "normalized": float(value[j + 2]), "normalized_ci": [float(low[j + 2]), float(high[j + 2])]})
            nxe = per_doc[n][layer].sum(axis=0)  # (X, E)
            with np.errstate(invalid="ignore", divide="ignore"):
                spec.append(((nxe * (nxe - 1) / (nx_all[:, None] - 1)).sum(axis=0) / nxe.sum(axis=0)).tolist())
                chance.append((nxe.sum(axis=0) / t_all).tolist())
                pairs.append(nxe.sum(axis=0).astype(int).tolist())
        out["per_rule"][n] = {
            "per_layer": layers,
            "normalized_mean": float(np.mean([r["normalized"] for r in layers])),
            "expert_spec": spec,
            "expert_chance": chance,
            "expert_pairs": pairs,
        }
    if len(names) > 1:
        base = 3 * len(names) * num_layers
        diffs = [{"layer": layer, "diff": float(value[base + layer]), "ci": [float(low[base + layer]), float(high[base + layer])]}
                 for layer in range(num_layers)]
        out["difference"] = diffs
        a, b = names[0], names[1]
        la, lb = ((labels or {}).get(n, n) for n in (a, b))
        up = sum(d["ci"][0] > 0 for d in diffs)
        down = sum(d["ci"][1] < 0 for d in diffs)
        na, nb = out["per_rule"][a]["normalized_mean"], out["per_rule"][b]["normalized_mean"]
        verdict = {(False, False): "keeps vocabulary specialisation", (True, False): "sharpens vocabulary specialisation",
                   (False, True): "blurs vocabulary specialisation"}.get(
            (up > 0, down > 0), "sharpens vocabulary specialisation in some layers and blurs it in others")
        out["sentence"] = (
            f"Vocabulary specialisation above chance ((S − S0)/(1 − S0), mean over layers, token ids seen ≥ {min_count} times): "
            f"{na:.3f} under {la} and {nb:.3f} under {lb}; the 95% interval of the difference lies above 0 in {up} and below 0 "
            f"in {down} of {num_layers} layers: {lb} {verdict}."
        )
    return out
