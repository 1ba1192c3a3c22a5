"""A family's knob, measured on calibration text: its direction, its monotonicity, and the value that
hits a target mean k.

A family declares its knob (the constructor parameter that a sweep, a matched comparison and a
certificate move) and a grid, never which way the knob moves the number of experts: that is
measured here, in patch mode on calibration windows (never evaluation text), from expert counts
only (never a loss or a risk). :func:`knob_profile` routes every grid value once;
:class:`KnobSearch` finds the value whose calibration mean k is within a tolerance of a target by
bisection, each next value proposed from the router logits of the last pass (any strategy routes
recorded logits without a forward pass) - the same search as BH's :class:`~.matching.AlphaSearch`,
for any family.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core import Strategy
from ..core.families import StrategyContractError, get_family
from .matching import TOLERANCE, Match, patch_pass

#: Largest decrease in calibration mean k (experts per token) along the knob's direction still
#: called monotone: the mean over calibration windows of a monotone rule cannot fall, but a rule
#: whose counts are computed in float on a patched model may wobble by rounding.
MONOTONE_SLACK = 1e-6


def knob_profile(model, seqs: torch.Tensor, family: str, make, values) -> dict:
    """Mean k at every knob value on the calibration windows ``seqs``; the direction; monotone or not.

    ``make(value) -> Strategy``. Returns ``{"family", "knob", "values", "mean_k", "direction"}``
    with direction +1 (more experts as the knob rises) or -1. Raises
    :class:`~bh_routing.core.families.StrategyContractError` (one line naming the rule) when the
    mean k does not move with the knob or is not monotone in it.
    """
    cls = get_family(family)
    where = f"{cls.__module__}:{cls.__qualname__}"
    values = sorted(set(float(v) for v in values))
    ks = [patch_pass(model, seqs, make(v))[0] for v in values]
    if len(values) < 2 or ks[-1] == ks[0]:
        raise StrategyContractError(
            f"routing rule {where}: its knob {cls.knob!r} does not change the mean number of experts on calibration "
            f"text (k = {ks[0]:.3f} at {cls.knob} = {values[0]:g} and {values[-1]:g})")
    direction = 1 if ks[-1] > ks[0] else -1
    steps = np.diff(ks) * direction
    if (steps < -MONOTONE_SLACK).any():
        i = int(np.argmin(steps))
        raise StrategyContractError(
            f"routing rule {where}: mean k is not monotone in its knob {cls.knob!r} on calibration text "
            f"(k = {ks[i]:.3f} at {values[i]:g}, {ks[i + 1]:.3f} at {values[i + 1]:g})")
    return {"family": cls.name, "knob": cls.knob, "values": values, "mean_k": ks, "direction": direction}


def _offline_k(strategy: Strategy, logits: list[torch.Tensor], top_k: int) -> float:
    """A strategy's mean k on recorded router logits (each layer's (T, E)), as the recorder averages."""
    counts = [strategy.route(z, layer=layer, model_top_k=top_k).counts.double().mean() for layer, z in enumerate(logits)]
    return float(torch.stack(counts).mean())


class KnobSearch:
    """Find knob values of one family that hit target mean k on calibration windows.

    Parameters
    ----------
    model, seqs
        The model and its calibration windows (N, S).
    make : callable
        ``make(value) -> Strategy``.
    lo, hi : float
        The knob's range searched (the family's grid ends, typically).
    model_top_k : int
    log : bool
        Search in log(value) (positive knobs spanning orders of magnitude).
    tol : float, default :data:`~.matching.TOLERANCE`
    max_passes : int
        Patch-mode passes per target at most.
    """

    def __init__(self, model, seqs: torch.Tensor, make, *, lo: float, hi: float, model_top_k: int, log: bool = False,
                 tol: float = TOLERANCE, max_passes: int = 6) -> None:
        if not lo < hi:
            raise ValueError(f"the knob's range must have lo < hi, got {lo} and {hi}")
        self.model, self.seqs, self.make, self.top_k, self.log = model, seqs, make, model_top_k, log
        self.tol, self.max_passes, self.passes = tol, max_passes, 0
        self._seen: list[tuple[float, float, list[torch.Tensor]]] = []  # (x, k, logits): x = value or log value
        self._x = (math.log(lo), math.log(hi)) if log else (lo, hi)
        for x in self._x:
            self._measure(x)
        self.direction = 1 if self._seen[1][1] >= self._seen[0][1] else -1

    def value(self, x: float) -> float:
        return math.exp(x) if self.log else x

    def _measure(self, x: float) -> float:
        k, logits = patch_pass(self.model, self.seqs, self.make(self.value(x)))
        self.passes += 1
        self._seen.append((x, k, logits))
        return k

    def find(self, target: float) -> Match:
        """The value whose calibration mean k is within ``tol`` of ``target``, or an unmatched Match."""
        k_ends = sorted(k for _, k, _ in self._seen[:2])
        if not k_ends[0] - self.tol <= target <= k_ends[1] + self.tol:
            return Match(target, None, None, False, 0,
                         f"outside: the family reaches mean k {k_ends[0]:.3f} to {k_ends[1]:.3f} on the calibration windows")
        start = self.passes
        while True:
            # in "rising" coordinates u = direction * x the mean k increases with u
            below = [(self.direction * x, k) for x, k, _ in self._seen if k < target]
            above = [(self.direction * x, k) for x, k, _ in self._seen if k >= target]
            best = min(self._seen, key=lambda s: abs(s[1] - target))
            if abs(best[1] - target) <= self.tol:
                return Match(target, self.value(best[0]), best[1], True, self.passes - start)
            if self.passes - start >= self.max_passes or not below or not above:
                return Match(target, self.value(best[0]), best[1], False, self.passes - start,
                             f"not within {self.tol} of the target after {self.passes - start} passes")
            lo, hi = max(u for u, _ in below), min(u for u, _ in above)
            width = abs(self._x[1] - self._x[0])
            if hi - lo < 1e-3 * width:  # k jumps across the target: no value hits it
                k_lo, k_hi = max(k for u, k in below if u == lo), min(k for u, k in above if u == hi)
                return Match(target, self.value(best[0]), best[1], False, self.passes - start,
                             f"the mean k jumps from {k_lo:.3f} to {k_hi:.3f} at {self.value(self.direction * lo):.6g}")
            u = self._propose(target, lo, hi, best[2])
            if not lo < u < hi or self.passes - start >= 3:  # safeguard: plain bisection after 3 proposals
                u = 0.5 * (lo + hi)
            self._measure(self.direction * u)

    def _propose(self, target: float, lo: float, hi: float, logits: list[torch.Tensor], *, steps: int = 20) -> float:
        """u in (lo, hi) where the mean k on the recorded logits crosses ``target`` (bisection)."""
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            if _offline_k(self.make(self.value(self.direction * mid)), logits, self.top_k) < target:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)


def matched_family_runs(model, calib_seqs: torch.Tensor, eval_seqs: torch.Tensor, *, family: str, make, values,
                        baselines: list[dict], top_k: int, min_k: int, max_k: int, label, tol: float = TOLERANCE,
                        match_windows: int = 16) -> dict:
    """A family matched in mean k to top-k at each integer k in [min_k + 1, K - 1] (K = min(max_k,
    top_k)) by :class:`KnobSearch` over its grid's range on the first ``match_windows`` calibration
    windows, each matched setting evaluated on ``eval_seqs``; the targets in the format of
    :func:`bh_routing.analysis.matching.matched_runs` (``family`` the challenger's name).

    ``make(value) -> Strategy``; ``label(value) -> str``; ``baselines``: the frontier runs (top-k's
    are the targets).
    """
    from .evaluate import evaluate_strategy

    seqs = calib_seqs[:match_windows]  # (M, S): calibration text only
    lo, hi = min(values), max(values)
    search = KnobSearch(model, seqs, make, lo=lo, hi=hi, model_top_k=top_k, log=lo > 0 and hi / lo >= 10, tol=tol)
    topk = {int(b["param"]): b for b in baselines if b["family"] == "topk"}
    k_hi = min(max_k, top_k) - 1
    targets, cache = [], {}
    for k in range(min_k + 1, k_hi + 1):
        if k not in topk:
            continue
        m = search.find(float(k))
        t = {"family": family, "baseline": topk[k]["label"], "baseline_family": "topk", **m.to_dict(),
             "primary": False, "run": None}
        if m.matched:
            if m.param not in cache:
                cache[m.param] = evaluate_strategy(model, eval_seqs, make(m.param), label=label(m.param),
                                                   family=family, param=m.param).to_dict()
            t["run"] = cache[m.param]
        targets.append(t)
    return {"family": family, "passes": search.passes, "evaluation_runs": len(cache), "targets": targets}
