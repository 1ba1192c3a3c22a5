"""A strategy's selections seen by the oracle: false discovery proportion, power and mean k per
sequence, per document and per layer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...core import BH, Strategy, bh_count
from ...models.ablation import LayerAblation
from ..evaluate import per_document
from ..stats import mean_ci
from .record import OracleData


@dataclass(frozen=True)
class Selection:
    """One strategy's choice on every layer, seen by the oracle."""

    effect: torch.Tensor  # (L, T, W) float32: ablation effect of the expert in each used slot, 0 outside the top-k, -1 unused
    discovery: torch.Tensor  # (L, T, W) bool: the slot is one of the strategy's discoveries (not forced by min_k)

    @property
    def mean_k(self) -> float:
        return float((self.effect >= 0).sum(dim=-1).double().mean())


def slot_effects(record: LayerAblation, indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(T, W): the ablation effect of each chosen expert (0 outside the model's top-k, -1 unused)."""
    t = record.effect.shape[0]
    full = torch.zeros(t, num_experts + 1)  # (T, E + 1), column E = the sentinel
    full.scatter_(1, record.model_indices, record.effect)
    full[:, num_experts] = -1.0
    return full.gather(1, indices)  # (T, W)


class MemoCalibration:
    """A calibration whose p-values of one logits tensor and layer are computed once (the BH
    settings of a sweep differ in alpha only, and the recorded logits stay the same objects)."""

    def __init__(self, calibration) -> None:
        self._calibration, self._memo = calibration, {}

    def __getattr__(self, name):
        return getattr(self._calibration, name)

    def _memoized(self, kind: str, logits: torch.Tensor, layer: int, temperature: float) -> torch.Tensor:
        key = (kind, id(logits), layer, temperature)
        if key not in self._memo:
            fn = getattr(self._calibration, kind)
            self._memo[key] = (logits, fn(logits, layer, temperature=temperature))
        return self._memo[key][1]  # the logits are kept with the entry, so their id stays theirs

    def pvalues(self, logits: torch.Tensor, layer: int, *, temperature: float = 1.0) -> torch.Tensor:
        return self._memoized("pvalues", logits, layer, temperature)

    def standardized_pvalues(self, logits: torch.Tensor, layer: int, *, temperature: float = 1.0) -> torch.Tensor:
        return self._memoized("standardized_pvalues", logits, layer, temperature)


def select(data: OracleData, strategy: Strategy, *, pvalue_cache: dict | None = None) -> Selection:
    """Route every layer's recorded logits with ``strategy``.

    For :class:`BH` the discoveries are the first ``min(k̂, count)`` slots, with k̂ BH's own
    rejection count before the ``min_k`` clamp; for any other strategy every selected slot.
    ``pvalue_cache``: a dict to keep BH's p-values in across calls that share them (same
    p-value settings, other alpha).
    """
    effects, discoveries = [], []
    for layer, rec in enumerate(data.layers):
        r = strategy.route(rec.logits, layer=layer, model_top_k=data.top_k, norm_topk_prob=data.norm_topk_prob)
        counts = r.counts
        if isinstance(strategy, BH):
            key = (layer, repr({k: v for k, v in strategy.describe().items() if k != "alpha"}), id(strategy.calibration))
            cache = {} if pvalue_cache is None else pvalue_cache
            if key not in cache:
                cache[key] = strategy.p_values(rec.logits, layer=layer)  # (T, E)
            # BH's own count k̂ differs from the clamped count only where the clamp to min_k acted
            at_min = counts <= strategy.min_k  # (T,)
            if bool(at_min.any()):
                rejected, _ = bh_count(cache[key][at_min], strategy.alpha)  # (t,), unclamped
                counts = counts.clone()
                counts[at_min] = torch.minimum(rejected, counts[at_min])
        effects.append(slot_effects(rec, r.indices, data.num_experts))  # (T, W)
        discoveries.append(torch.arange(r.indices.shape[1]) < counts.unsqueeze(1))  # (T, W)
    return stack_selections(effects, discoveries)


def stack_selections(effects: list[torch.Tensor], discoveries: list[torch.Tensor]) -> Selection:
    width = max(e.shape[1] for e in effects)

    def pad(x: torch.Tensor, value) -> torch.Tensor:  # (T, w) -> (T, width)
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    return Selection(
        effect=torch.stack([pad(e, -1.0) for e in effects]),  # (L, T, W)
        discovery=torch.stack([pad(d, False) for d in discoveries]),  # (L, T, W)
    )


def per_sequence(data: OracleData, sel: Selection, tau: float) -> dict[str, np.ndarray]:
    """Per-sequence FDP (discoveries), FDP (all selected), power and mean k, each (N,)."""
    return per_sequence_taus(data, sel, (tau,))[0]


def per_sequence_taus(data: OracleData, sel: Selection, taus) -> list[dict[str, np.ndarray]]:
    """:func:`per_sequence` at each threshold of ``taus`` (one pass over the selection)."""
    n, s = data.num_sequences, data.seq_len
    t = torch.tensor([float(x) for x in taus], dtype=sel.effect.dtype)  # (K,)
    used = sel.effect >= 0  # (L, T, W)
    needed_sel = sel.effect.unsqueeze(0) > t[:, None, None, None]  # (K, L, T, W)
    r = sel.discovery.sum(-1).float()  # (L, T)
    c = used.sum(-1).float()
    hits = needed_sel.sum(-1).float()  # (K, L, T): needed among the selected
    v = r - (needed_sel & sel.discovery).sum(-1).float()  # (K, L, T): discoveries not needed
    v_all = c - hits  # every selected slot is used
    needed = torch.stack([data.needed(x) for x in taus]).float()  # (K, L, T)

    def by_seq(x: torch.Tensor) -> torch.Tensor:  # (..., L, N*S) -> (..., N, L*S)
        lead = x.shape[:-2]
        return x.reshape(*lead, -1, n, s).transpose(-3, -2).reshape(*lead, n, -1)

    fdp = by_seq(v / r.clamp(min=1)).double().mean(dim=-1)  # (K, N)
    fdp_all = by_seq(v_all / c.clamp(min=1)).double().mean(dim=-1)
    power = by_seq(hits).double().sum(dim=-1) / by_seq(needed).double().sum(dim=-1).clamp(min=1)
    mean_k, discoveries = by_seq(c).double().mean(dim=-1).numpy(), by_seq(r).double().mean(dim=-1).numpy()  # (N,)
    needed_mean = by_seq(needed).double().mean(dim=-1)  # (K, N): needed experts per (token, layer), power's weight
    return [
        {"fdp": fdp[i].numpy(), "fdp_all": fdp_all[i].numpy(), "power": power[i].numpy(), "mean_k": mean_k,
         "discoveries": discoveries, "needed": needed_mean[i].numpy()}
        for i in range(len(t))
    ]


def per_doc(values: dict[str, np.ndarray], documents: list[str] | None) -> dict[str, np.ndarray]:
    """Per-sequence values reduced to one per document (the unit of every interval): means over the
    document's windows, power weighted by the window's needed experts (so it stays pooled)."""
    return {
        k: per_document(v, documents, weights=values["needed"] if k == "power" else None)[1]
        for k, v in values.items()
    }


def per_layer(data: OracleData, sel: Selection, tau: float) -> dict[str, list[float]]:
    """FDP (discoveries), power and mean k per MoE layer, pooled over all tokens."""
    needed_sel = sel.effect > tau
    r = sel.discovery.sum(-1).double()  # (L, T)
    v = (sel.discovery & ~needed_sel).sum(-1).double()
    return {
        "fdp": (v / r.clamp(min=1)).mean(dim=1).tolist(),
        "power": (needed_sel.sum(dim=(1, 2)).double() / data.needed(tau).sum(dim=1).clamp(min=1)).tolist(),
        "mean_k": (sel.effect >= 0).sum(-1).double().mean(dim=1).tolist(),
    }


def summarize(values: dict[str, np.ndarray]) -> dict:
    """Mean and t-interval over documents of each per-document quantity."""
    return {k: mean_ci(v) for k, v in values.items()}
