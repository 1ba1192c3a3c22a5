"""One recorded forward pass over the evaluation sequences, kept per token.

The routing analyses of :mod:`~bh_routing.analysis.difficulty`,
:mod:`~bh_routing.analysis.coactivation` and :mod:`~bh_routing.analysis.specialization` all
read the same per-token detail: the model's next-token loss and predictive entropy, and per MoE
layer the router probabilities, the experts a strategy chose and (in analyze mode) the experts
the model itself chose. :func:`record_detail` gets all of it from one forward pass per
strategy; :func:`route_recorded` applies further strategies to the recorded router logits
without running the model again (on the same hidden states, so only the routing rule differs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core import Strategy
from ..models import get_adapter, patched
from ..models.adapters import text_config


@dataclass
class TokenDetail:
    """Per-token detail of one forward pass over N sequences of S tokens, L MoE layers, E experts."""

    token_ids: np.ndarray  # (N, S) int64
    loss: np.ndarray  # (N, S - 1) float64: NLL of token s + 1 given tokens ..s (nats)
    entropy: np.ndarray  # (N, S - 1) float64: entropy of the predictive distribution at s (nats)
    logits: torch.Tensor  # (L, N, S, E) float32 router logits
    probs: np.ndarray  # (L, N, S, E) float32 router probabilities (the family's softmax/sigmoid)
    chosen: np.ndarray  # (L, N, S, E) bool: the experts the recorded strategy chose
    model_chosen: np.ndarray | None  # (L, N, S, E) bool: the model's own top-k (analyze mode only)
    mode: str  # "patch" (the model routed with the strategy) or "analyze" (routed as usual)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(L, N, S, E)."""
        return tuple(self.probs.shape)  # type: ignore[return-value]


def _mask(indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(T, W) expert ids with sentinel E -> (T, E) bool."""
    m = torch.zeros(indices.shape[0], num_experts + 1, dtype=torch.bool)
    return m.scatter_(1, indices.long(), True)[:, :num_experts]


@torch.no_grad()
def record_detail(model, sequences: torch.Tensor, strategy: Strategy, *, mode: str, batch_size: int = 8) -> TokenDetail:
    """Run ``sequences`` (N, S) once with ``strategy`` in ``mode`` and keep every token's detail.

    ``mode="analyze"``: the model's outputs are its own (bit-identical), the strategy's choice is
    recorded beside the model's; ``mode="patch"``: the model routes with the strategy.
    """
    device = next(model.parameters()).device
    n, s = sequences.shape
    losses, entropies = [], []
    with patched(model, strategy, mode=mode, record_tokens=True) as rec:
        for start in range(0, n, batch_size):
            ids = sequences[start : start + batch_size].to(device)  # (b, S)
            logits = model(input_ids=ids).logits[:, :-1].float()  # (b, S - 1, V)
            logp = F.log_softmax(logits, dim=-1)  # (b, S - 1, V)
            losses.append(-logp.gather(-1, ids[:, 1:, None])[..., 0].double().cpu())  # (b, S - 1)
            entropies.append(-(logp.exp() * logp).sum(-1).double().cpu())  # (b, S - 1)
            del logits, logp
        layers = [rec.tokens(layer) for layer in range(rec.num_layers)]
    e = rec.num_experts
    shape = (rec.num_layers, n, s, e)
    router_logits = torch.stack([t["logits"] for t in layers]).view(shape)  # (L, N, S, E)
    probs = torch.stack([t["probs"] for t in layers]).view(shape)  # (L, N, S, E)
    chosen = torch.stack([_mask(t["indices"], e) for t in layers]).view(shape)  # (L, N, S, E)
    model_chosen = None
    if all("model_indices" in t for t in layers):
        model_chosen = torch.stack([_mask(t["model_indices"], e) for t in layers]).view(shape).numpy()
    return TokenDetail(
        token_ids=sequences.cpu().numpy().astype(np.int64),
        loss=torch.cat(losses).numpy(),
        entropy=torch.cat(entropies).numpy(),
        logits=router_logits,
        probs=probs.numpy(),
        chosen=chosen.numpy(),
        model_chosen=model_chosen,
        mode=mode,
    )


@torch.no_grad()
def route_recorded(model, detail: TokenDetail, strategy: Strategy, *, sequences: int | None = None) -> np.ndarray:
    """(L, N, S, E) bool: the experts ``strategy`` chooses for the recorded router logits.

    Uses the model family's adapter (as :func:`~bh_routing.models.patched` does), so the choice is
    the one the strategy would make inside the model on the same hidden states.
    ``sequences``: route only the first that many sequences (N becomes that number).
    """
    adapter, config = get_adapter(model), text_config(model)
    layers = adapter.find_layers(model)
    num_layers, n, s, e = detail.shape
    n = n if sequences is None else min(n, sequences)
    out = np.zeros((num_layers, n, s, e), dtype=bool)
    for layer in layers:
        logits = detail.logits[layer.ordinal, :n].reshape(n * s, e)  # (T, E)
        result = adapter.route(strategy, logits, layer, config)
        out[layer.ordinal] = _mask(result.indices.cpu(), e).view(n, s, e).numpy()
    return out
