"""Ablation records: how much each of the model's own top-k experts contributes to the MoE output.

For a token x at an MoE layer the model's router picks its top-k experts S with weights w (the
family's convention). The routed output is :math:`O = \\sum_{j \\in S} w_j f_j(x)` with
:math:`f_j` expert j's output. Removing expert e from S gives

.. math::

    O_{-e} = \\sum_{j \\in S \\setminus e} w'_j f_j(x), \\qquad
    w'_j = w_j \\text{ (no renormalisation, OLMoE)} \\quad\\text{or}\\quad
    w'_j = w_j \\frac{\\sum_{i \\in S} w_i}{\\sum_{i \\in S} w_i - w_e} \\text{ (renormalising families)},

and the *ablation effect* is the relative L2 change :math:`\\lVert O - O_{-e} \\rVert /
\\lVert O \\rVert` (for OLMoE, ``norm_topk_prob=False``: :math:`\\lVert w_e f_e(x) \\rVert /
\\lVert O \\rVert`). It is exact, not a linearisation: each (token, expert) pair is computed once
by the model's own experts module (any backend), and the k ablated outputs follow by arithmetic.
Cost: the k routed pairs once more per token and layer, i.e. one extra MoE pass.

``O`` is the *routed* experts' output (what the experts module returns); a shared expert
(Qwen2-MoE, DeepSeek-V3) is left out of both numerator and denominator.

Experts outside the model's top-k are not ablated: against the top-k reference their removal
changes nothing, so they are "not needed" by definition (see :mod:`bh_routing.analysis.oracle`).

The records are taken by a forward pre-hook on each MoE block that reruns the router's and the
experts' *class* forwards on the block input, so it works on an unpatched model and inside
:func:`bh_routing.models.patched` alike (patch mode: the reference is still the model's own top-k
at that layer, on the hidden states that the patched routing upstream produced).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .adapters import get_adapter
from .adapters.base import text_config


@dataclass(frozen=True)
class LayerAblation:
    """One MoE layer's ablation record for N tokens (CPU tensors)."""

    logits: torch.Tensor  # (N, E) float32 router logits
    model_indices: torch.Tensor  # (N, k) int64, the model's own top-k experts
    model_weights: torch.Tensor  # (N, k) float32, their mixing weights (family convention)
    effect: torch.Tensor  # (N, k) float32, ||O - O_{-e}|| / ||O|| for the expert in each slot


def ablation_effects(
    outputs: torch.Tensor, weights: torch.Tensor, *, renormalized: bool
) -> torch.Tensor:
    """Relative L2 change of the routed output when each chosen expert is removed.

    Parameters
    ----------
    outputs : torch.Tensor, shape (T, k, H)
        Each chosen expert's unweighted output :math:`f_j(x_t)`.
    weights : torch.Tensor, shape (T, k)
        The mixing weights :math:`w_j` of the model's routing.
    renormalized : bool, keyword-only
        Whether the model renormalises the weights of the chosen experts (see the module notes).

    Returns
    -------
    torch.Tensor, shape (T, k), float32
        :math:`\\lVert O - O_{-e} \\rVert / \\lVert O \\rVert`; ``inf`` where ``O = 0`` and the
        difference is not, 0 where both are.
    """
    f = outputs.float()  # (T, k, H)
    w = weights.float()  # (T, k)
    k = w.shape[-1]
    others = w.unsqueeze(1) * (1.0 - torch.eye(k, device=w.device))  # (T, k, k): row e = weights without e
    full = torch.einsum("tj,tjh->th", w, f).unsqueeze(1)  # (T, 1, H)
    # summed directly, not as full - w_e f_e: no cancellation when w_e dominates and is renormalised away
    removed = torch.einsum("tej,tjh->teh", others, f)  # (T, k, H)
    if renormalized:
        rest = others.sum(dim=-1, keepdim=True)  # (T, k, 1)
        removed = removed * (w.sum(dim=-1)[:, None, None] / rest.clamp_min(torch.finfo(torch.float32).tiny))
    diff = torch.linalg.vector_norm(full - removed, dim=-1)  # (T, k)
    norm = torch.linalg.vector_norm(full, dim=-1)  # (T, 1)
    return torch.where(norm > 0, diff / norm.clamp_min(torch.finfo(torch.float32).tiny), diff * float("inf")).nan_to_num(
        nan=0.0
    )


def _block_input(args, kwargs) -> torch.Tensor:
    hidden = kwargs.get("hidden_states") if "hidden_states" in kwargs else args[0]
    return hidden.reshape(-1, hidden.shape[-1])  # (T, H)


@contextmanager
def recording_ablation(model) -> Iterator[list[list[LayerAblation]]]:
    """Record an ablation record for every MoE layer and forward call inside the ``with`` block.

    Yields a list with one list per MoE layer (ordinals 0..L-1) that each forward call appends a
    :class:`LayerAblation` to. Padding is not masked: feed unpadded sequences.
    """
    adapter = get_adapter(model)
    config = text_config(model)
    renormalized = adapter.norm_topk_prob(config)
    layers = adapter.find_layers(model)
    records: list[list[LayerAblation]] = [[] for _ in layers]

    def hook_for(layer):
        router, experts = layer.router, layer.experts

        @torch.no_grad()
        def hook(module, args, kwargs):
            hidden = _block_input(args, kwargs)  # (T, H)
            out = type(router).forward(router, hidden)  # class forward: no patch, no hook
            adapter.check_router_output(out, layer)
            logits, weights, indices = out  # (T, E), (T, k), (T, k)
            t, k = indices.shape
            rows = hidden.repeat_interleave(k, dim=0)  # (T*k, H), token-major
            f = type(experts).forward(
                experts, rows, indices.reshape(-1, 1), torch.ones(t * k, 1, dtype=weights.dtype, device=weights.device)
            )  # (T*k, H): each pair's unweighted output
            effect = ablation_effects(f.reshape(t, k, -1), weights, renormalized=renormalized)  # (T, k)
            records[layer.ordinal].append(
                LayerAblation(
                    logits=logits.detach().float().cpu(),
                    model_indices=indices.detach().long().cpu(),
                    model_weights=weights.detach().float().cpu(),
                    effect=effect.cpu(),
                )
            )

        return hook

    handles = [layer.block.register_forward_pre_hook(hook_for(layer), with_kwargs=True) for layer in layers]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def concat_layer(records: list[LayerAblation]) -> LayerAblation:
    """One record from a layer's per-call records, calls concatenated in order."""
    return LayerAblation(
        logits=torch.cat([r.logits for r in records]),
        model_indices=torch.cat([r.model_indices for r in records]),
        model_weights=torch.cat([r.model_weights for r in records]),
        effect=torch.cat([r.effect for r in records]),
    )
