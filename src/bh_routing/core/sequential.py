"""Sequential calibration: each layer's null fitted under the routing that will be evaluated.

A calibration recorded with the model routing by its own top-k describes layer l's router
logits on hidden states that top-k routing produced in layers 0..l-1. A strategy that routes
those layers differently (BH with fewer experts, say) feeds layer l other hidden states, so its
logits are no longer exchangeable with the calibration sample and the conformal p-values lose
their validity from layer 1 on (measured: ``bh_routing.analysis.oracle``).

Sequential calibration restores exchangeability by construction. For l = 0, 1, ..., L-1 the
calibration text is run with layers 0..l-1 routed by the strategy under evaluation - which uses
the nulls already fitted for those layers - and layer l's null is fitted from the logits that
reach it. Layer 0 is the same as in the ordinary calibration. The null of each (layer, expert)
is the same kind as before ("unrouted": the tokens whose own top-k at that layer does not
contain the expert, or "all"); only the distribution of the hidden states changes. The price is
one pass over the calibration text per layer, and a calibration that belongs to one strategy
(one alpha, min_k, max_k): other settings route the layers below differently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .calibration import Calibration, CalibrationBuilder


def empty_calibration(
    *, num_layers: int, num_experts: int, top_k: int, null: str, reservoir_size: int, model_name: str,
    model_fingerprint: str, pooled_size: int = 65536,
) -> Calibration:
    """A calibration with no null values: every p-value is 1 (``(1 + 0) / (0 + 1)``)."""
    return Calibration(
        model_name=model_name,
        model_fingerprint=model_fingerprint,
        num_layers=num_layers,
        num_experts=num_experts,
        top_k=top_k,
        null=null,
        null_sorted=torch.full((num_layers, num_experts, reservoir_size), float("-inf")),
        null_count=torch.zeros(num_layers, num_experts, dtype=torch.int64),
        num_tokens=0,
        std_sorted=torch.full((num_layers, pooled_size), float("-inf")),
        std_count=torch.zeros(num_layers, dtype=torch.int64),
    )


def with_layer(calibration: Calibration, layer: int, fitted: Calibration) -> Calibration:
    """``calibration`` with MoE layer ``layer`` replaced by the only layer of ``fitted``."""
    from dataclasses import replace

    null_sorted = calibration.null_sorted.clone()  # (L, E, R)
    null_count = calibration.null_count.clone()  # (L, E)
    null_sorted[layer] = fitted.null_sorted[0]
    null_count[layer] = fitted.null_count[0]
    std_sorted, std_count = calibration.std_sorted.clone(), calibration.std_count.clone()  # (L, Rp), (L,)
    std_sorted[layer], std_count[layer] = fitted.std_sorted[0], fitted.std_count[0]
    seen = fitted.num_tokens if calibration.num_tokens == 0 else min(calibration.num_tokens, fitted.num_tokens)
    return replace(calibration, null_sorted=null_sorted, null_count=null_count, std_sorted=std_sorted,
                   std_count=std_count, num_tokens=seen)


def fit_sequential(
    logits_at: Callable[[int, Calibration], Iterable[torch.Tensor]],
    *,
    num_layers: int,
    num_experts: int,
    top_k: int,
    null: str = "unrouted",
    reservoir_size: int = 4096,
    pooled_size: int = 65536,
    seed: int = 0,
    model_name: str,
    model_fingerprint: str,
) -> Calibration:
    """Fit a calibration layer by layer under the strategy being evaluated (see the module notes).

    Parameters
    ----------
    logits_at : callable ``(layer, calibration) -> iterable of (T, E) tensors``
        The router logits that reach MoE layer ``layer`` on the calibration text when layers
        ``0..layer-1`` are routed by the evaluated strategy built on ``calibration``. Its layers
        below ``layer`` are final; the others are empty (p = 1) and must not be used.
    num_layers, num_experts, top_k, null, reservoir_size, pooled_size, seed
        As for :class:`~bh_routing.core.calibration.CalibrationBuilder`; layer l's sample is
        drawn with seed ``seed + l``.
    model_name, model_fingerprint : str
        Identify the model (:meth:`Calibration.check_matches`).

    Returns
    -------
    Calibration
        Same format as an ordinary calibration.
    """
    ident = {"model_name": model_name, "model_fingerprint": model_fingerprint}
    sizes = {"reservoir_size": reservoir_size, "pooled_size": pooled_size}
    cal = empty_calibration(num_layers=num_layers, num_experts=num_experts, top_k=top_k, null=null, **sizes, **ident)
    for layer in range(num_layers):
        builder = CalibrationBuilder(
            num_layers=1, num_experts=num_experts, top_k=top_k, null=null, **sizes, seed=seed + layer
        )
        for logits in logits_at(layer, cal):
            builder.update(0, logits)
        cal = with_layer(cal, layer, builder.finalize(**ident))
    return cal
