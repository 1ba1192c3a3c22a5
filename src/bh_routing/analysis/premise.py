"""The premise test and OLMoE's routing analyses under BH, from two recorded forward passes.

1. The model routes as usual (analyze mode) with the run's BH recorded beside it: the model's
   own next-token loss and predictive entropy, its router probabilities, its own top-k choice
   and BH's choice per layer and token. Top-p, the weight ratio and the other adaptive families
   are applied to the same recorded router logits, so every rule decides on the same hidden
   states, each at the **nearest grid setting chosen on calibration text**
   (:func:`choose_settings`: the grid value whose mean k is closest to BH's on the first
   calibration windows, never the evaluation ones). That is not a matched comparison: the chosen
   setting's mean k and BH's are reported on both texts, and they differ by the grid's spacing and
   by sampling.
2. The model routes with BH (patch mode): each token's loss under BH and the router mass BH
   left out.

From these: :func:`~bh_routing.analysis.difficulty.difficulty_analysis` (does k track
difficulty? with the verdict), :func:`~bh_routing.analysis.difficulty.loss_attribution` (where
the loss goes), :func:`~bh_routing.analysis.coactivation.coactivation_analysis` and
:mod:`~bh_routing.analysis.specialization` (domain and vocabulary), top-k against BH.
The statistical unit is the document (``documents``; by default each sequence is its own).
"""

from __future__ import annotations

import numpy as np
import torch

from . import experiments
from .coactivation import coactivation_analysis
from .difficulty import difficulty_analysis, loss_attribution
from ..core.files import json_clean
from .resampling import document_index
from .settings import RoutingSettings, bh_label, setting_label
from .specialization import domain_specialization, routed_counts, vocabulary_specialization
from .token_detail import TokenDetail, record_detail, route_recorded


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) over the last axis of probabilities."""
    p = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


#: Calibration windows the adaptive families' settings are chosen on (one window each of as many
#: calibration documents; 16 x 256 = 4096 tokens in the default run, one analyze-mode pass).
CHOICE_WINDOWS = 16


@torch.no_grad()
def choose_settings(model, calib_seqs: torch.Tensor, rs: RoutingSettings, calibration, *, top_k: int) -> dict:
    """Each adaptive family's grid value whose mean k is nearest BH's, on calibration windows only.

    One analyze-mode pass over ``calib_seqs`` (the model routing by its own top-k, BH recorded
    beside it, as :func:`premise_study` records the evaluation text); every grid value of every
    family of ``rs.families`` but top-k routes the recorded logits. Returns ``{family: {"param",
    "calibration_k"}}`` and ``"bh_calibration_k"`` (BH's mean k there), ``"calibration_windows"``.
    """
    _, bh = experiments.topk_and_bh(top_k, rs, calibration)
    detail = record_detail(model, calib_seqs, bh, mode="analyze")
    bh_k = float(detail.chosen.sum(axis=-1).mean())
    out: dict = {"bh_calibration_k": bh_k, "calibration_windows": int(calib_seqs.shape[0]), "families": {}}
    for f in [f for f in rs.families if f != "topk"]:
        means = {float(v): float(route_recorded(model, detail, rs.strategy(f, v)).sum(axis=-1).mean())
                 for v in rs.grid(f, top_k=top_k)}
        best = min(means, key=lambda v: abs(means[v] - bh_k))
        out["families"][f] = {"param": best, "calibration_k": means[best]}
    return out


@torch.no_grad()
def premise_study(
    model,
    sequences: torch.Tensor,
    rs: RoutingSettings,
    calibration,
    *,
    top_k: int,
    domains: list[str] | None = None,
    documents: list | None = None,
    settings: dict | None = None,
) -> dict:
    """All analyses of the module notes on ``sequences`` (N, S); JSON-able.

    Parameters
    ----------
    model : a supported transformers MoE model
    sequences : LongTensor (N, S)
    rs : RoutingSettings
        The run's BH (``variant``, ``alpha``, ``min_k``, ``max_k``) and the adaptive families
        (every family of ``rs.families`` but top-k) with their grids.
    calibration : Calibration or None
        Needed when the run's BH uses the calibrated null.
    top_k : int
        The model's own k.
    domains : list of str, optional
        The domain of each sequence (domain specialisation needs two or more).
    documents : list, optional
        The document of each sequence (the statistical unit); default: each sequence its own.
    settings : dict
        :func:`choose_settings` on calibration windows: each adaptive family's setting.
    """
    if settings is None:
        raise ValueError("settings must be chosen on calibration windows first (choose_settings)")
    n, s = sequences.shape
    topk, bh = experiments.topk_and_bh(top_k, rs, calibration)
    k_model = topk.k
    base = record_detail(model, sequences, bh, mode="analyze")
    routed = record_detail(model, sequences, bh, mode="patch")
    if base.model_chosen is None:
        raise RuntimeError("analyze mode did not record the model's own choice")
    num_layers, _, _, e = base.shape
    bh_mean = float(base.chosen.sum(axis=-1).mean())
    adaptive = list(settings["families"])
    nearest = {}  # family -> (value, mean k, (L, N, S, E) choice) on the evaluation sequences
    for f, chosen in settings["families"].items():
        c = route_recorded(model, base, rs.strategy(f, chosen["param"]))
        nearest[f] = (chosen["param"], float(c.sum(axis=-1).mean()), c)

    strategies = {
        "topk": {"label": f"TopK(k={k_model})", "mean_k": float(k_model), "strategy": topk.describe()},
        "bh": {"label": bh_label(rs.variant, rs.alpha), "mean_k": bh_mean, "strategy": bh.describe(),
               "mode": "analyze", "calibration_k": settings["bh_calibration_k"]},
        "bh_patched": {"label": bh_label(rs.variant, rs.alpha) + ", routing the model",
                       "mean_k": float(routed.chosen.sum(axis=-1).mean()), "mode": "patch"},
        **{f: {"label": setting_label(f, v), "param": v, "mean_k": mk,
               "calibration_k": settings["families"][f]["calibration_k"],
               "choice": "nearest grid setting to BH's mean k, chosen on calibration text"}
           for f, (v, mk, _) in nearest.items()},
    }
    labels = {name: v["label"] for name, v in strategies.items()}
    seq_doc, n_docs = document_index(documents if documents is not None else range(n))  # (N,)

    # --- difficulty: positions 0..S-2 (each has a next token), tokens flattened sequence-major
    def per_token(chosen: np.ndarray) -> np.ndarray:  # (L, N, S, E) -> (L, N * (S - 1)) experts
        return chosen[:, :, :-1].sum(axis=-1).reshape(num_layers, -1)

    pos_doc = np.repeat(seq_doc, s - 1)  # (N * (S - 1),)
    k = {"bh": per_token(base.chosen), **{f: per_token(c) for f, (_, _, c) in nearest.items()},
         "bh_patched": per_token(routed.chosen)}
    router_entropy = _entropy(base.probs[:, :, :-1]).reshape(num_layers, -1)  # (L, N * (S - 1))
    difficulty = difficulty_analysis(
        k, {"loss": base.loss.reshape(-1), "entropy": base.entropy.reshape(-1)}, router_entropy, pos_doc,
        primary="bh", compare=tuple(adaptive), labels=labels)

    # --- where the loss goes: BH-routed forward against the model's own
    top_mass = np.sort(routed.probs, axis=-1)[..., -k_model:].sum(axis=-1)  # (L, N, S)
    bh_mass = (routed.probs * routed.chosen).sum(axis=-1)  # (L, N, S)
    dropped = (top_mass - bh_mass)[:, :, :-1].mean(axis=0).reshape(-1)  # (N * (S - 1),)
    attribution = loss_attribution(dropped, (routed.loss - base.loss).reshape(-1), pos_doc)

    # --- co-activation and specialisation: every position, same hidden states, top-k vs BH
    tok_doc = np.repeat(seq_doc, s)  # (N * S,)
    flat = {"topk": base.model_chosen.reshape(num_layers, n * s, e), "bh": base.chosen.reshape(num_layers, n * s, e)}
    coact = coactivation_analysis(flat, tok_doc, labels=labels)
    doc_domain = None
    if domains is not None:
        first: dict[int, str] = {}
        for c, d in zip(seq_doc.tolist(), domains):
            first.setdefault(c, d)
        doc_domain = [first[c] for c in range(n_docs)]
    domain = (domain_specialization({r: routed_counts(m, tok_doc, n_docs) for r, m in flat.items()}, doc_domain,
                                    labels=labels)
              if doc_domain is not None else {"skipped": "no domains given"})
    vocab = vocabulary_specialization(base.token_ids.reshape(-1), flat, tok_doc, labels=labels)

    return json_clean({  # NaN (an undefined ρ, an empty bin) becomes None: cached steps compare equal
        "sequences": n,
        "seq_len": s,
        "documents": n_docs,
        "model_top_k": k_model,
        "choice_windows": settings["calibration_windows"],
        "strategies": strategies,
        "loss_topk": float(base.loss.mean()),
        "loss_bh": float(routed.loss.mean()),
        "difficulty": difficulty,
        "loss_attribution": attribution,
        "coactivation": coact,
        "domain_specialization": domain,
        "vocabulary_specialization": vocab,
    })
