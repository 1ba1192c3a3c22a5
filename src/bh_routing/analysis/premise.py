"""The premise test and OLMoE's routing analyses under BH, from two recorded forward passes.

1. The model routes as usual (analyze mode) with the run's BH recorded beside it: the model's
   own next-token loss and predictive entropy, its router probabilities, its own top-k choice
   and BH's choice per layer and token. Top-p and weight ratio are applied to the same recorded
   router logits, at the parameter whose mean experts per token is closest to BH's (a matched
   comparison), so every rule decides on the same hidden states.
2. The model routes with BH (patch mode): each token's loss under BH and the router mass BH
   left out.

From these: :func:`~bh_routing.analysis.difficulty.difficulty_analysis` (does k track
difficulty? with the verdict), :func:`~bh_routing.analysis.difficulty.loss_attribution` (where
the loss goes), :func:`~bh_routing.analysis.coactivation.coactivation_analysis` and
:mod:`~bh_routing.analysis.specialization` (domain and vocabulary), top-k against BH.
The unit of resampling is the sequence (or the document, when ``clusters`` says so).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..core import TopP, WeightRatio
from . import experiments
from .coactivation import coactivation_analysis
from .config import RunConfig
from .difficulty import difficulty_analysis, loss_attribution
from .resampling import cluster_ids
from .specialization import domain_specialization, routed_counts, vocabulary_specialization
from .token_detail import TokenDetail, record_detail, route_recorded


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) over the last axis of probabilities."""
    p = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def matched_parameter(model, detail: TokenDetail, make, values, target: float, *, search_tokens: int = 2048):
    """The value whose strategy ``make(value)`` chooses a mean number of experts closest to ``target``.

    The search routes the first sequences holding about ``search_tokens`` tokens (a mean k is
    stable to a few hundredths there); the chosen value then routes every sequence. Returns
    (value, its mean experts per token, its (L, N, S, E) choice) on the recorded logits.
    """
    _, n, s, _ = detail.shape
    head = max(1, min(n, -(-search_tokens // s)))  # sequences searched (ceil)
    means = {float(v): float(route_recorded(model, detail, make(v), sequences=head).sum(axis=-1).mean()) for v in values}
    best = min(means, key=lambda v: abs(means[v] - target))
    chosen = route_recorded(model, detail, make(best))
    return best, float(chosen.sum(axis=-1).mean()), chosen


@torch.no_grad()
def premise_study(
    model,
    sequences: torch.Tensor,
    cfg: RunConfig,
    calibration,
    *,
    domains: list[str] | None = None,
    clusters: list | None = None,
) -> dict:
    """All analyses of the module notes on ``sequences`` (N, S); JSON-able.

    Parameters
    ----------
    model : a supported transformers MoE model
    sequences : LongTensor (N, S)
    cfg : RunConfig
        The run's configuration: its BH (``bh_pvalues``, ``alpha``, ``min_k``, ``max_k``), the
        top-p and weight-ratio grids, ``n_resamples`` and ``seed``.
    calibration : Calibration or None
        Needed when the run's BH uses the calibrated null.
    domains : list of str, optional
        The domain of each sequence (domain specialisation needs two or more).
    clusters : list, optional
        The resampling unit of each sequence (e.g. its document); default: the sequence itself.
    """
    n, s = sequences.shape
    clock = {"start": time.perf_counter()}
    topk, bh = experiments.topk_and_bh(model, cfg, calibration)
    k_model = topk.k
    base = record_detail(model, sequences, bh, mode="analyze")
    routed = record_detail(model, sequences, bh, mode="patch")
    if base.model_chosen is None:
        raise RuntimeError("analyze mode did not record the model's own choice")
    num_layers, _, _, e = base.shape
    clock["forward"] = time.perf_counter()
    bh_mean = float(base.chosen.sum(axis=-1).mean())
    tp, tp_mean, tp_chosen = matched_parameter(
        model, base, lambda p: TopP(p, min_k=cfg.min_k, max_k=cfg.max_k), cfg.topp_values, bh_mean)
    wr, wr_mean, wr_chosen = matched_parameter(
        model, base, lambda b: WeightRatio(b, min_k=cfg.min_k, max_k=cfg.max_k), cfg.ratio_values, bh_mean)

    clock["matched"] = time.perf_counter()
    seq_cluster, n_clusters = cluster_ids(clusters if clusters is not None else range(n))  # (N,)
    kw = {"n_resamples": cfg.n_resamples, "seed": cfg.seed}

    # --- difficulty: positions 0..S-2 (each has a next token), tokens flattened sequence-major
    def per_token(chosen: np.ndarray) -> np.ndarray:  # (L, N, S, E) -> (L, N * (S - 1)) experts
        return chosen[:, :, :-1].sum(axis=-1).reshape(num_layers, -1)

    pos_cluster = np.repeat(seq_cluster, s - 1)  # (N * (S - 1),)
    k = {"bh": per_token(base.chosen), "topp": per_token(tp_chosen), "weight_ratio": per_token(wr_chosen),
         "bh_patched": per_token(routed.chosen)}
    router_entropy = _entropy(base.probs[:, :, :-1]).reshape(num_layers, -1)  # (L, N * (S - 1))
    difficulty = difficulty_analysis(
        k, {"loss": base.loss.reshape(-1), "entropy": base.entropy.reshape(-1)}, router_entropy, pos_cluster,
        primary="bh", compare=("topp", "weight_ratio"), point_only=("bh_patched",), **kw)

    clock["difficulty"] = time.perf_counter()
    # --- where the loss goes: BH-routed forward against the model's own
    top_mass = np.sort(routed.probs, axis=-1)[..., -k_model:].sum(axis=-1)  # (L, N, S)
    bh_mass = (routed.probs * routed.chosen).sum(axis=-1)  # (L, N, S)
    dropped = (top_mass - bh_mass)[:, :, :-1].mean(axis=0).reshape(-1)  # (N * (S - 1),)
    attribution = loss_attribution(dropped, (routed.loss - base.loss).reshape(-1), pos_cluster, **kw)

    clock["loss_attribution"] = time.perf_counter()
    # --- co-activation and specialisation: every position, same hidden states, top-k vs BH
    tok_cluster = np.repeat(seq_cluster, s)  # (N * S,)
    flat = {"topk": base.model_chosen.reshape(num_layers, n * s, e), "bh": base.chosen.reshape(num_layers, n * s, e)}
    coact = coactivation_analysis(flat, tok_cluster)
    clock["coactivation"] = time.perf_counter()
    cluster_domain = None
    if domains is not None:
        first = {}
        for c, d in zip(seq_cluster.tolist(), domains):
            first.setdefault(c, d)
        cluster_domain = [first[c] for c in range(n_clusters)]
    domain = (domain_specialization({r: routed_counts(m, tok_cluster, n_clusters) for r, m in flat.items()},
                                    cluster_domain)
              if cluster_domain is not None else {"skipped": "no domains given"})
    vocab = vocabulary_specialization(base.token_ids.reshape(-1), flat, tok_cluster)
    clock["specialization"] = time.perf_counter()
    names = list(clock)
    seconds = {b: round(clock[b] - clock[a], 3) for a, b in zip(names, names[1:])}

    strategies = {
        "topk": {"label": f"TopK(k={k_model})", "mean_k": float(k_model), "strategy": topk.describe()},
        "bh": {"label": experiments.bh_label(cfg.bh_pvalues, cfg.alpha), "mean_k": bh_mean, "strategy": bh.describe(),
               "mode": "analyze"},
        "bh_patched": {"label": experiments.bh_label(cfg.bh_pvalues, cfg.alpha) + ", routing the model",
                       "mean_k": float(routed.chosen.sum(axis=-1).mean()), "mode": "patch"},
        "topp": {"label": f"TopP(p={tp:g})", "param": tp, "mean_k": tp_mean},
        "weight_ratio": {"label": f"WeightRatio(β={wr:g})", "param": wr, "mean_k": wr_mean},
    }
    return {
        "sequences": n,
        "seq_len": s,
        "clusters": n_clusters,
        "model_top_k": k_model,
        "strategies": strategies,
        "loss_topk": float(base.loss.mean()),
        "loss_bh": float(routed.loss.mean()),
        "difficulty": difficulty,
        "loss_attribution": attribution,
        "coactivation": coact,
        "domain_specialization": domain,
        "vocabulary_specialization": vocab,
        "seconds": seconds,  # wall time of each part (this machine, this load)
    }
