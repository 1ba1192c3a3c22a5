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
    family: str  # a family's name (core.families), or "bh-<variant>" for BH
    param: float | None  # the family's knob value (k, p, beta, alpha, ...); None for a published setting
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


def per_document(values, documents: list[str] | None, *, weights=None) -> tuple[list[str], np.ndarray]:
    """Reduce per-sequence ``values`` (N,) to one value per document: the (``weights``-weighted) mean
    over the document's windows, documents in order of first appearance.

    ``documents`` gives each sequence's document id; None means every sequence is its own document.
    """
    values = np.asarray(values, float)
    if documents is None:
        documents = [str(i) for i in range(len(values))]
    if len(documents) != len(values):
        raise ValueError(f"{len(values)} values but {len(documents)} document ids")
    w = np.ones_like(values) if weights is None else np.asarray(weights, float)
    ids = list(dict.fromkeys(documents))
    index = {d: i for i, d in enumerate(ids)}
    pos = np.array([index[d] for d in documents])
    num = np.bincount(pos, weights=values * w, minlength=len(ids))  # (D,)
    den = np.bincount(pos, weights=w, minlength=len(ids))  # (D,)
    return ids, num / den


def document_loss(run: dict, documents: list[str] | None) -> np.ndarray:
    """Per-document loss (nats per predicted token): summed NLL over summed tokens of its windows."""
    nll, tokens = np.asarray(run["seq_nll"], float), np.asarray(run["seq_tokens"], float)
    return per_document(nll / tokens, documents, weights=tokens)[1]


def document_mean_k(run: dict, documents: list[str] | None) -> np.ndarray:
    """Per-document mean experts per token (windows weighted by their tokens)."""
    return per_document(run["seq_mean_k"], documents, weights=run["seq_tokens"])[1]


def _hist_stats(hist: torch.Tensor) -> tuple[float, float]:
    """Mean and sd of k from a (L, W+1) or (W+1,) histogram."""
    k = torch.arange(hist.shape[-1], dtype=torch.float64)
    h = hist.sum(dim=0).double() if hist.dim() == 2 else hist.double()
    n = h.sum()
    mean = float((h * k).sum() / n)
    var = float((h * (k - mean) ** 2).sum() / max(n - 1, 1))
    return mean, var**0.5


@torch.no_grad()
def sequence_nll(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL per sequence (B,) float64, and the predicted tokens per sequence."""
    logits = model(input_ids=input_ids).logits  # (B, S, V)
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), input_ids[:, 1:], reduction="none")  # (B, S-1)
    return nll.sum(dim=1).double(), input_ids.shape[1] - 1


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
    batch_size: int = 8,
) -> StrategyRun:
    """Route ``sequences`` (N, S) with ``strategy``: per-sequence loss and experts per token.

    Sequences run in batches; each sequence's mean k comes from the per-token counts the
    Recorder keeps (``record_tokens=True``; calls are recorded in order, rows batch-major).
    """
    device = next(model.parameters()).device
    n, s = sequences.shape
    seq_nll: list[float] = []
    with patched(model, strategy, mode=mode, record_tokens=True) as rec:
        for start in range(0, n, batch_size):
            ids = sequences[start : start + batch_size].to(device)  # (b, S)
            nll, predicted = sequence_nll(model, ids)
            seq_nll += nll.tolist()
        counts = torch.stack([rec.tokens(layer)["counts"] for layer in range(rec.num_layers)])  # (L, N*S)
        seq_k = counts.view(rec.num_layers, n, s).double().mean(dim=(0, 2))  # (N,)
        hist = rec.k_histogram()
        _, sd_k = _hist_stats(hist)
        desc = strategy.describe() if isinstance(strategy, Strategy) else {str(k): v.describe() for k, v in strategy.items()}
        return StrategyRun(
            label=label,
            family=family,
            param=None if param is None else float(param),
            strategy=desc,
            mode=mode,
            mean_k=rec.mean_experts_per_token(),
            sd_k=sd_k,
            k_histogram=hist.sum(dim=0).tolist(),
            mean_k_per_layer=rec.mean_k_per_layer().tolist(),
            expert_counts=rec.expert_counts().tolist(),
            compute_fraction=rec.compute_fraction(),
            seq_nll=seq_nll,
            seq_tokens=[predicted] * n,
            seq_mean_k=seq_k.tolist(),
        )
