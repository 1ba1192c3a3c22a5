"""How often the p-values reject experts outside the model's top-k: the null rejection rates per layer."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..evaluate import per_document
from ..stats import mean_ci
from .record import OracleData

LEVELS = (0.001, 0.01, 0.05)  # levels a of the null rejection rates P(p <= a | e not in top-k)


def null_rejection_rates(
    data: OracleData, pvalues: Callable[[int, torch.Tensor], torch.Tensor], *, levels=LEVELS,
    documents: list[str] | None = None,
) -> list[dict]:
    """Per layer: P(p_e <= a | e not in the model's top-k at that layer) for each level a.

    The nominal value is a (conformal p-values: at most a, when calibration and evaluation tokens
    are exchangeable). Interval: the t-interval over documents of the per-document rate (each
    document's rejections over its null pairs; documents weigh the same).
    """
    n, s = data.num_sequences, data.seq_len
    out = []
    for layer, rec in enumerate(data.layers):
        p = pvalues(layer, rec.logits)  # (T, E)
        null = torch.ones_like(p, dtype=torch.bool).scatter(1, rec.model_indices, False)  # (T, E)
        pairs = null.sum(1).reshape(n, s).sum(1).double().numpy()  # (N,) per sequence
        row = {"layer": layer, "null_pairs": int(pairs.sum())}
        for a in levels:
            hits = ((p <= a) & null).sum(1).reshape(n, s).sum(1).double().numpy()  # (N,)
            rate = per_document(hits / pairs, documents, weights=pairs)[1]  # (D,)
            ci = mean_ci(rate)
            row[str(a)] = {**ci, "pooled": float(hits.sum() / pairs.sum()), "ratio_to_nominal": ci["mean"] / a}
        out.append(row)
    return out
