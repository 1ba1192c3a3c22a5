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


#: float32 logits of one chunk of the loss at most this large (64 MiB: 333 tokens of a 50,304-word vocabulary)
LOSS_CHUNK_BYTES = 64 * 2**20
# config attributes that make the logits more than lm_head(final hidden states): the full path then
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_softcapping", "logits_scaling", "logit_scale")


def _plain_head(model):
    """(decoder, lm_head) where the logits are ``lm_head(decoder(...).last_hidden_state)``, else None."""
    config = model.config
    if any(getattr(config, a, None) not in (None, 1, 1.0) for a in _LOGIT_TRANSFORMS):
        return None
    get_decoder, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    decoder = get_decoder() if callable(get_decoder) else None
    head = get_head() if callable(get_head) else None
    return None if decoder is None or decoder is model or not isinstance(head, torch.nn.Linear) else (decoder, head)


def _chunked_nll(decoder, head: torch.nn.Linear, input_ids: torch.Tensor, chunk_tokens: int | None) -> torch.Tensor:
    """(B, S-1) float32 NLL from the final hidden states, the vocabulary projected a chunk of tokens at a time."""
    hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]  # (B, S-1, H)
    b, s1, h = hidden.shape
    flat, target = hidden.reshape(b * s1, h), input_ids[:, 1:].reshape(b * s1)
    n = chunk_tokens or max(1, LOSS_CHUNK_BYTES // (4 * head.out_features))
    nll = torch.empty(b * s1, dtype=torch.float32, device=hidden.device)  # (B*(S-1),)
    for i in range(0, b * s1, n):
        logits = head(flat[i : i + n]).float()  # (n, V)
        nll[i : i + n] = F.cross_entropy(logits, target[i : i + n], reduction="none")
        del logits
    return nll.view(b, s1)


@torch.no_grad()
def sequence_nll(model, input_ids: torch.Tensor, *, chunk_tokens: int | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL per sequence (B,) float64, and the predicted tokens per sequence.

    Never holds full (B, S, V) logits: the final hidden states are projected onto the vocabulary
    ``chunk_tokens`` tokens at a time (default: float32 logits of at most LOSS_CHUNK_BYTES), equal to
    the full loss up to float32 rounding (tests/analysis/test_evaluate_memory.py). Sequences run at
    most ``models.memory.batch_cap(model)`` at a time. inf/NaN in the loss (float16 overflow) raise
    ``NonFiniteError`` rather than being reported.
    """
    from ..models.device import NonFiniteError, non_finite_message
    from ..models.memory import batch_cap

    head = _plain_head(model)
    cap = batch_cap(model) or input_ids.shape[0]
    parts = []
    for start in range(0, input_ids.shape[0], cap):
        ids = input_ids[start : start + cap]
        if head is None:  # logits transformed after the head: the full loss
            logits = model(input_ids=ids, use_cache=False).logits  # (b, S, V)
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:], reduction="none")  # (b, S-1)
            del logits
        else:
            nll = _chunked_nll(*head, ids, chunk_tokens)
        parts.append(nll.sum(dim=1).double())
    total = torch.cat(parts)
    if not bool(torch.isfinite(total).all()):
        raise NonFiniteError(non_finite_message(next(model.parameters()).dtype, "the loss and hidden states"))
    return total, input_ids.shape[1] - 1


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
