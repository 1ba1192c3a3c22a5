"""Sequential calibration on a model: layer l's null recorded with layers 0..l-1 routed by the
strategy under evaluation (the algorithm: :mod:`bh_routing.core.sequential`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..core import Calibration, Strategy, TopK
from ..core.sequential import fit_sequential
from ..models import get_adapter, inspect_model, model_fingerprint, patched


class _Stop(Exception):
    """Raised after the layer being calibrated: the layers above it are not needed."""


@torch.no_grad()
def fit_sequential_calibration(
    model,
    sequences: torch.Tensor,
    make_strategy: Callable[[Calibration], Strategy],
    *,
    null: str,
    reservoir_size: int,
    seed: int,
    model_name: str,
    batch_size: int = 8,
) -> Calibration:
    """A calibration whose layer l null was recorded under ``make_strategy(calibration)`` below l.

    Parameters
    ----------
    model : a supported transformers MoE model
    sequences : torch.Tensor, shape (N, S)
        Calibration sequences (no padding).
    make_strategy : callable ``Calibration -> Strategy``
        The strategy being evaluated, built on a (partial) calibration, e.g.
        ``lambda cal: BH(0.05, pvalues="calibrated", calibration=cal)``.
    null, reservoir_size, seed, model_name
        As for :func:`bh_routing.analysis.experiments.fit_calibration`.

    Notes
    -----
    One pass over ``sequences`` per MoE layer, each stopped right after the layer it fits (so
    about (L + 1) / 2 full passes in all). Layers at and above the one being fitted route with
    the model's own top-k in patch mode.
    """
    routing = inspect_model(model)
    num_layers, num_experts, top_k = routing.num_moe_layers, routing.num_experts, routing.top_k
    routers = [layer.router for layer in get_adapter(model).find_layers(model)]
    device = next(model.parameters()).device

    def logits_at(layer: int, cal: Calibration) -> Iterator[torch.Tensor]:
        below = make_strategy(cal)
        mapping = {i: below for i in range(layer)}
        mapping["default"] = TopK(top_k)
        with patched(model, mapping, mode="patch", record_tokens=True) as rec:

            def stop(module, args, output):
                raise _Stop

            handle = routers[layer].register_forward_hook(stop)
            try:
                for start in range(0, len(sequences), batch_size):
                    rec.reset()
                    try:
                        model(input_ids=sequences[start : start + batch_size].to(device))
                    except _Stop:
                        pass
                    yield rec.tokens(layer)["logits"]  # (b * S, E)
            finally:
                handle.remove()

    return fit_sequential(
        logits_at,
        num_layers=num_layers,
        num_experts=num_experts,
        top_k=top_k,
        null=null,
        reservoir_size=reservoir_size,
        seed=seed,
        model_name=model_name,
        model_fingerprint=model_fingerprint(model),
    )
