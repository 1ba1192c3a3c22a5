"""The oracle's record: every MoE layer's logits, the model's top-k and each top-k expert's
ablation effect, from one forward pass; and routing by the oracle itself (:class:`OracleRouting`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...core import Strategy
from ...models import get_adapter
from ...models.ablation import LayerAblation, concat_layer, recording_ablation
from ...models.adapters import text_config

TAU = 0.05  # default relative-L2 threshold of "needed": dropping every expert under it costs < 1% ppl (docs/fdr_oracle.md)
TAUS = (0.02, 0.05, 0.1, 0.2, 0.3)  # the sensitivity grid


@dataclass
class OracleData:
    """Ablation records of N sequences of S tokens, every MoE layer (tokens sequence-major)."""

    layers: list[LayerAblation]  # (L,) records of N * S tokens each
    num_sequences: int  # N
    seq_len: int  # S
    num_experts: int  # E
    top_k: int  # the model's k
    norm_topk_prob: bool  # the model's weight convention
    _needed: dict = field(default_factory=dict, repr=False, compare=False)  # tau -> (L, N*S)

    def needed(self, tau: float) -> torch.Tensor:
        """(L, N*S) int64: needed experts per token at threshold ``tau``."""
        if tau not in self._needed:
            self._needed[tau] = torch.stack([(r.effect > tau).sum(dim=1) for r in self.layers])
        return self._needed[tau]


@torch.no_grad()
def record(model, sequences: torch.Tensor, *, batch_size: int = 8) -> OracleData:
    """Run ``sequences`` (N, S) through ``model`` as it is (patched or not); record every layer."""
    adapter, config = get_adapter(model), text_config(model)
    device = next(model.parameters()).device
    n, s = sequences.shape
    with recording_ablation(model) as records:
        for start in range(0, n, batch_size):
            model(input_ids=sequences[start : start + batch_size].to(device))
    return OracleData(
        layers=[concat_layer(r) for r in records],
        num_sequences=n,
        seq_len=s,
        num_experts=adapter.num_experts(config),
        top_k=adapter.top_k(config),
        norm_topk_prob=adapter.norm_topk_prob(config),
    )


class OracleRouting(Strategy):
    """Route with the oracle itself: the model's top-k experts whose ablation effect exceeds tau.

    For checking what "needed" means (patch mode: does dropping every unneeded expert at once
    keep the model's quality?), not for deployment - it runs every top-k expert to decide.
    Needs :func:`bh_routing.models.ablation.recording_ablation` active around the forward: its
    block pre-hook records the effects of the current call before the router runs, and this
    strategy reads the latest record of its layer. Experts are taken by descending effect;
    at least ``min_k``.
    """

    name = "oracle"

    def __init__(self, records: list[list[LayerAblation]], tau: float, *, min_k: int = 1) -> None:
        self.records, self.tau, self.min_k = records, float(tau), min_k

    def describe(self) -> dict:
        return {"name": self.name, "tau": self.tau, "min_k": self.min_k}

    def choose(self, logits, probs, *, layer, model_top_k):
        recs = self.records[layer]
        if not recs or recs[-1].effect.shape[0] != logits.shape[0]:  # patched()'s dry run
            return torch.topk(probs, model_top_k, dim=-1).indices, torch.full((len(probs),), model_top_k), model_top_k
        rec = recs[-1]
        ranked = rec.effect.argsort(dim=1, descending=True, stable=True)  # (T, k)
        order = rec.model_indices.gather(1, ranked).to(logits.device)  # (T, k), most needed first
        counts = (rec.effect > self.tau).sum(dim=1).clamp(self.min_k, model_top_k).to(logits.device)  # (T,)
        return order, counts, model_top_k
