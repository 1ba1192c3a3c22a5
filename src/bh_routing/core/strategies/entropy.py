"""The router-entropy ladder: k per token from the entropy of the router's softmax.

The rule of the PyPI package ``adaptive-k-routing`` (0.1.5, Apache-2.0; its OLMoE preset): with
:math:`H = -\\sum_e \\pi_e \\log \\pi_e` (nats) of a token's router distribution, run
k = 1 expert if H < 0.7, k = 2 if H < 1.3, else k = 4. This module is our own implementation of
that rule, widened to a one-parameter family: thresholds multiplied by ``scale`` (the knob; a
larger scale means higher thresholds, so fewer experts), and, by default, a ladder up to the
model's k. The experts run are the router's top k.
"""

from __future__ import annotations

import torch

from .._validate import check_choice
from .base import Strategy, _check_weight_rule, router_order

#: preset -> (entropy thresholds in nats, ladder of k; None = 1, 2, 4, ... up to the model's k).
#: "adaptive-k-olmoe" is the published preset exactly; "widened" adds a rung: k = the model's k
#: (8 for OLMoE) from H >= 2.0 (about ln 8, as 0.7 and 1.3 are about ln 2 and ln 4; our choice).
PRESETS = {"widened": ((0.7, 1.3, 2.0), None), "adaptive-k-olmoe": ((0.7, 1.3), (1, 2, 4))}


def entropy_nats(probs: torch.Tensor) -> torch.Tensor:
    """(T,) Shannon entropy in nats of each row of (T, E) probabilities (0 log 0 = 0)."""
    return -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(dim=-1)


def _ladder(ladder, rungs: int, model_top_k: int | None, num_experts: int) -> tuple[int, ...]:
    if ladder is not None:
        return ladder
    top = model_top_k if model_top_k is not None else num_experts
    ks = [min(2**i, top) for i in range(rungs)]
    ks[-1] = top  # the last rung is the model's k
    return tuple(ks)


class Entropy(Strategy):
    """k per token from the router's entropy by thresholds on a ladder (adaptive-k-routing's rule).

    :math:`k = \\ell_j` for :math:`s\\,h_{j} \\le H < s\\,h_{j+1}` with thresholds
    :math:`h_1 < h_2 < \\dots` (nats), :math:`h_0 = -\\infty`, ladder :math:`\\ell` and scale
    :math:`s`; the experts are the router's top k.

    Parameters
    ----------
    scale : float > 0, default 1.0
        Multiplies every threshold: larger, fewer experts. ``scale=1`` with
        ``preset="adaptive-k-olmoe"`` is the published OLMoE preset (k = 1, 2, 4 below 0.7,
        below 1.3, above).
    preset : {"widened", "adaptive-k-olmoe"}, default "widened"
        The thresholds and ladder, see :data:`PRESETS`.
    weight_rule : {"model", "softmax", "renormalize"}, default "model"

    References
    ----------
    ``adaptive-k-routing`` 0.1.5 (PyPI, Apache-2.0), whose README reports 24.7 % compute saved on
    OLMoE-1B-7B at 99.7 % quality, without intervals.
    """

    name = "entropy"
    knob = "scale"
    grid = (0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
    label = "Router entropy ladder"
    color = "#e6ab02"
    references = {"adaptive-k-olmoe": {"scale": 1.0, "preset": "adaptive-k-olmoe"}}  # the published preset

    def __init__(self, scale: float = 1.0, *, preset: str = "widened", weight_rule: str = "model") -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 or scale == float("inf"):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)
        self.preset = check_choice(preset, tuple(PRESETS), name="preset")
        self.weight_rule = _check_weight_rule(weight_rule)
        self._cuts: dict = {}  # device -> (thresholds x scale) tensor

    def choose(self, logits, probs, *, layer, model_top_k):
        thresholds, ladder = PRESETS[self.preset]
        ks = _ladder(ladder, len(thresholds) + 1, model_top_k, probs.shape[-1])
        width = max(ks)
        if width > probs.shape[-1]:
            raise ValueError(f"the entropy ladder's top rung {width} exceeds the number of experts ({probs.shape[-1]})")
        key = (probs.device, ks)
        if key not in self._cuts:
            self._cuts[key] = (torch.tensor(thresholds, dtype=torch.float32, device=probs.device) * self.scale,
                               torch.tensor(ks, dtype=torch.long, device=probs.device))
        cuts, rungs = self._cuts[key]
        h = entropy_nats(probs)  # (T,)
        counts = rungs[torch.bucketize(h, cuts, right=True)]  # (T,): rung j where cut_j <= H < cut_{j+1}
        order = router_order(probs, width)  # (T, W): the router's own call
        return order, counts, width
