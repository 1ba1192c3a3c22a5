"""The baselines at BH's mean k: top-k, top-p and weight-ratio selections from one ranking of the
experts, and the random mix of two settings that matches a mean k exactly."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .record import OracleData
from .selection import Selection, per_sequence, slot_effects, stack_selections


class Ranking:
    """Each layer's experts by descending router probability: the order top-k, top-p and
    weight-ratio all take their first k from, so one sort serves every setting of the three.

    ``counts(family, param)`` applies each strategy's own count rule (:class:`TopK`,
    :class:`TopP`: experts before the sorted mass reaches p; :class:`WeightRatio`: experts within
    a factor beta of the top one; both clamped to [min_k, max_k]); the tests check the selections
    against the strategies' ``route``.
    """

    def __init__(self, data: OracleData, *, min_k: int, max_k: int) -> None:
        self.data, self.min_k, self.max_k = data, min_k, max_k
        width = max(max_k, data.top_k)  # top-k runs up to the model's k, the others up to max_k
        ranked = [torch.softmax(r.logits, dim=-1).sort(dim=-1, descending=True, stable=True) for r in data.layers]
        probs = [v[:, :width] for v, _ in ranked]  # (T, W) per layer
        # the quantities the two count rules threshold, first max_k columns
        self._mass_before = [(p.cumsum(-1) - p)[:, :max_k].contiguous() for p in probs]  # (T, max_k)
        self._ratio = [(p[:, :max_k] / p[:, :1]).contiguous() for p in probs]  # (T, max_k)
        # mean k as a function of the parameter, exactly: both thresholded quantities are monotone
        # along the ranking, so a clamped count is min_k + #{j in [min_k, max_k): value passes};
        # pooled over layers and tokens and sorted once, a mean k is one binary search
        self._pooled = {
            family: np.sort(torch.cat([v[:, min_k:].reshape(-1) for v in values]).numpy())
            for family, values in (("topp", self._mass_before), ("weight_ratio", self._ratio))
        }
        self._cells = sum(len(p) for p in probs)  # tokens x layers
        self.effects = [slot_effects(r, i[:, :width], data.num_experts) for r, (_, i) in zip(data.layers, ranked)]
        self._cache: dict = {}

    def counts(self, family: str, param: float) -> list[torch.Tensor]:
        """(T,) experts per token on each layer."""
        t = self.data.layers[0].logits.shape[0]
        if family == "topk":
            return [torch.full((t,), int(param)) for _ in self.data.layers]
        if family == "topp":  # experts before the sorted mass reaches p
            return [(m < param).sum(-1).clamp(self.min_k, self.max_k) for m in self._mass_before]
        if family == "weight_ratio":  # experts within a factor beta of the top one
            return [(r >= param).sum(-1).clamp(self.min_k, self.max_k) for r in self._ratio]
        raise ValueError(f"unknown baseline family {family!r}")

    def mean_k(self, family: str, param: float) -> float:
        """Mean experts per (token, layer) of a setting, from the pooled sorted values."""
        if family == "topk":
            return float(param)
        if family == "topp":  # values < p pass
            passing = np.searchsorted(self._pooled["topp"], np.float32(param), side="left")
        elif family == "weight_ratio":  # values >= beta pass
            values = self._pooled["weight_ratio"]
            passing = len(values) - np.searchsorted(values, np.float32(param), side="left")
        else:
            raise ValueError(f"unknown baseline family {family!r}")
        return self.min_k + passing / self._cells

    def selection(self, family: str, param: float) -> Selection:
        effects, used = [], []
        for eff, c in zip(self.effects, self.counts(family, param)):
            u = torch.arange(eff.shape[1]) < c.unsqueeze(1)  # (T, W)
            effects.append(torch.where(u, eff, torch.full_like(eff, -1.0)))
            used.append(u)
        return stack_selections(effects, used)

    def values(self, family: str, param: float, tau: float) -> dict[str, np.ndarray]:
        key = (family, param, tau)
        if key not in self._cache:
            self._cache[key] = per_sequence(self.data, self.selection(family, param), tau)
        return self._cache[key]


def bracket(count: Callable[[float], float], target: float, *, increasing: bool, steps: int = 40) -> tuple[float, float]:
    """Parameters (a, b) in (0, 1] with count(a) <= target <= count(b), by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if (count(mid) <= target) == increasing:
            lo = mid
        else:
            hi = mid
    return (max(lo, 1e-12), hi) if increasing else (hi, max(lo, 1e-12))


def _interpolate(a: dict, b: dict, target: float) -> dict[str, np.ndarray]:
    """Per-sequence values of the random mix of two settings whose mean k brackets ``target``."""
    ka, kb = float(a["mean_k"].mean()), float(b["mean_k"].mean())
    lam = 0.0 if kb == ka else min(max((target - ka) / (kb - ka), 0.0), 1.0)
    return {k: (1 - lam) * a[k] + lam * b[k] for k in a}


def matched(ranking: Ranking, family: str, target: float, *, tau: float) -> dict | None:
    """A baseline family at overall mean k ``target``: per-sequence values and its two settings.

    None when the family cannot reach ``target`` (top-k: outside [1, k]; the others: outside the
    mean k of their extreme settings).
    """
    if family == "topk":
        top = ranking.data.top_k
        if not 1 - 1e-9 <= target <= top + 1e-9:
            return None
        ka = min(max(int(math.floor(target)), 1), top)
        a, b = (ka, min(ka + 1, top))
    else:
        count = lambda param: ranking.mean_k(family, param)  # noqa: E731
        ends = (count(1e-12), count(1.0))
        if not min(ends) - 1e-9 <= target <= max(ends) + 1e-9:
            return None
        a, b = bracket(count, target, increasing=family == "topp")
    values = _interpolate(ranking.values(family, a, tau), ranking.values(family, b, tau), target)
    return {"settings": [a, b], **values}
