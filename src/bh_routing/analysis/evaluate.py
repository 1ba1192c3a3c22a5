"""Run a model under one routing strategy and measure experts used and quality, per sequence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core import Strategy
from ..models import patched


@dataclass
class StrategyRun:
    """What one strategy did on a set of sequences (everything JSON-able)."""

    label: str  # e.g. "BH(α=0.05, empirical)"
    family: str  # "topk" | "topp" | "weight_ratio" | "bh-empirical" | "bh-calibrated"
    param: float  # k, p, beta or alpha: the swept parameter
    strategy: dict  # Strategy.describe()
    mode: str  # "patch" or "analyze"
    mean_k: float  # mean experts per token over all MoE layers and tokens
    sd_k: float  # sd of experts per (token, layer)
    k_histogram: list[int]  # tokens x layers that used k = 0..W experts
    mean_k_per_layer: list[float]  # (L,)
    expert_counts: list[list[int]]  # (L, E)
    compute_fraction: float  # computed (token, expert) pairs / the model's top-k pairs
    seq_nll: list[float] = field(default_factory=list)  # per sequence: summed next-token NLL (nats)
    seq_tokens: list[int] = field(default_factory=list)  # per sequence: predicted tokens
    seq_mean_k: list[float] = field(default_factory=list)  # per sequence: mean experts per token

    @property
    def ppl(self) -> float:
        return float(np.exp(np.sum(self.seq_nll) / np.sum(self.seq_tokens)))

    @property
    def seq_loss(self) -> np.ndarray:
        """Per-sequence mean NLL per token (nats)."""
        return np.asarray(self.seq_nll) / np.asarray(self.seq_tokens)

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl": self.ppl if self.seq_tokens else None}


def _hist_stats(hist: torch.Tensor) -> tuple[float, float]:
    k = torch.arange(hist.shape[-1], dtype=torch.float64)
    h = hist.sum(dim=0).double() if hist.dim() == 2 else hist.double()
    n = h.sum()
    mean = float((h * k).sum() / n)
    var = float((h * (k - mean) ** 2).sum() / max(n - 1, 1))
    return mean, var**0.5


@torch.no_grad()
def sequence_nll(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL (float64 scalar) and the number of predicted tokens for (1, S) ids."""
    logits = model(input_ids=input_ids).logits  # (1, S, V)
    nll = F.cross_entropy(logits[0, :-1].float(), input_ids[0, 1:], reduction="sum")
    return nll.double(), input_ids.shape[1] - 1


@torch.no_grad()
def evaluate_strategy(
    model,
    sequences: torch.Tensor,
    strategy: Strategy | dict,
    *,
    label: str,
    family: str,
    param: float,
    mode: str = "patch",
    quality: bool = True,
) -> StrategyRun:
    """Route ``sequences`` (N, S) with ``strategy``; per-sequence loss and experts per token.

    One forward per sequence, so each sequence's mean k is exact (Recorder deltas).
    """
    device = next(model.parameters()).device
    seq_nll, seq_tokens, seq_k = [], [], []
    with patched(model, strategy, mode=mode) as rec:
        for row in sequences:
            ids = row.unsqueeze(0).to(device)  # (1, S)
            before_pairs, before_tokens = rec.selected_pairs(), int(rec.tokens_per_layer().sum())
            if quality:
                nll, n = sequence_nll(model, ids)
                seq_nll.append(float(nll))
                seq_tokens.append(n)
            else:
                model(input_ids=ids)
            pairs = rec.selected_pairs() - before_pairs
            tokens = int(rec.tokens_per_layer().sum()) - before_tokens
            seq_k.append(pairs / tokens)
        hist = rec.k_histogram()
        mean_k, sd_k = _hist_stats(hist)
        desc = strategy.describe() if isinstance(strategy, Strategy) else {str(k): v.describe() for k, v in strategy.items()}
        return StrategyRun(
            label=label,
            family=family,
            param=float(param),
            strategy=desc,
            mode=mode,
            mean_k=rec.mean_experts_per_token(),
            sd_k=sd_k,
            k_histogram=hist.sum(dim=0).tolist(),
            mean_k_per_layer=rec.mean_k_per_layer().tolist(),
            expert_counts=rec.expert_counts().tolist(),
            compute_fraction=rec.compute_fraction(),
            seq_nll=seq_nll,
            seq_tokens=seq_tokens,
            seq_mean_k=seq_k,
        )
