"""The fixed and simple variable-k baselines: top-k, top-p, weight ratio."""

from __future__ import annotations

import torch

from .._validate import check_alpha, check_k_bounds
from .base import Strategy, _check_weight_rule, _resolve_max_k, router_order


class TopK(Strategy):
    """The standard router: the k experts of highest probability (ties by index, as torch.topk).

    Parameters
    ----------
    k : int
        Experts per token, 1 <= k <= E.
    weight_rule : {"model", "softmax", "renormalize"}, default "model"
    """

    name = "topk"
    knob = "k"
    grid = (1, 2, 3, 4, 5, 6, 7, 8)  # clipped to the model's top-k by the run
    label = "Top-k"
    color = "#444444"
    fixed_width = True

    def __init__(self, k: int, *, weight_rule: str = "model") -> None:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.weight_rule = _check_weight_rule(weight_rule)

    def choose(self, logits, probs, *, layer, model_top_k):
        if self.k > probs.shape[-1]:
            raise ValueError(f"k must be <= the number of experts ({probs.shape[-1]}), got {self.k}")
        order = router_order(probs, self.k)  # (T, k), same call as the routers
        counts = torch.full((probs.shape[0],), self.k, dtype=torch.long, device=probs.device)
        return order, counts, self.k


class TopP(Strategy):
    """Top-p (nucleus) routing (Huang et al. 2024, "Harder tasks need more experts").

    The smallest set of experts, by descending probability, whose probability mass reaches p:
    :math:`k = \\min\\{k : \\sum_{j \\le k} \\pi_{(j)} \\ge p\\}`, clamped to [min_k, max_k].

    Parameters
    ----------
    p : float in (0, 1]
    min_k : int, default 1
    max_k : int or None, default None (the model's top-k, else E)
    weight_rule : {"model", "softmax", "renormalize"}, default "model"
    """

    name = "topp"
    knob = "p"
    grid = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    label = "Top-p"
    color = "#1f77b4"

    def __init__(self, p: float, *, min_k: int = 1, max_k: int | None = None, weight_rule: str = "model") -> None:
        check_alpha(p, name="p")
        check_k_bounds(min_k, max_k)
        self.p, self.min_k, self.max_k = float(p), min_k, max_k
        self.weight_rule = _check_weight_rule(weight_rule)

    def choose(self, logits, probs, *, layer, model_top_k):
        width = _resolve_max_k(self.max_k, model_top_k, probs.shape[-1], self.min_k)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # (T, E)
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # (T, E): mass of the better experts
        counts = (mass_before < self.p).sum(dim=-1).clamp(self.min_k, width)  # (T,)
        return order, counts, width


class WeightRatio(Strategy):
    """Keep the experts whose probability is at least beta times the top one (NAEE, Lu et al. 2024).

    :math:`k = \\#\\{e : \\pi_e \\ge \\beta\\, \\max_j \\pi_j\\}`, clamped to [min_k, max_k].

    Parameters
    ----------
    beta : float in (0, 1]
    min_k : int, default 1
    max_k : int or None, default None (the model's top-k, else E)
    weight_rule : {"model", "softmax", "renormalize"}, default "model"
    """

    name = "weight_ratio"
    knob = "beta"
    knob_symbol = "β"
    grid = (0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
    label = "Weight ratio (NAEE)"
    color = "#2ca02c"

    def __init__(
        self, beta: float, *, min_k: int = 1, max_k: int | None = None, weight_rule: str = "model"
    ) -> None:
        check_alpha(beta, name="beta")
        check_k_bounds(min_k, max_k)
        self.beta, self.min_k, self.max_k = float(beta), min_k, max_k
        self.weight_rule = _check_weight_rule(weight_rule)

    def choose(self, logits, probs, *, layer, model_top_k):
        width = _resolve_max_k(self.max_k, model_top_k, probs.shape[-1], self.min_k)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # (T, E)
        counts = (sorted_p >= self.beta * sorted_p[:, :1]).sum(dim=-1).clamp(self.min_k, width)
        return order, counts, width
