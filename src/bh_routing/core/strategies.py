"""Routing strategies: router logits (T, E) -> chosen experts per token, padded to a fixed width.

Every strategy returns a :class:`RoutingResult`: ``indices`` (T, W) with unused slots set to the
sentinel ``E`` (one past the last expert), ``weights`` (T, W) with 0 in unused slots, and
``counts`` (T,). The experts modules of transformers read the width W from the tensor shape;
the model layer makes every experts backend skip the sentinel.

Weights. ``weight_rule="model"`` follows the model's convention, passed in by the model layer
as ``norm_topk_prob`` (OLMoE: False -> the raw softmax probabilities of the chosen experts;
Mixtral, Qwen3-MoE: True -> renormalised to sum 1). ``"softmax"`` and ``"renormalize"`` force
one or the other. Weights always come from the untempered softmax of the router logits: the
temperature of :class:`BH` changes which experts are chosen, not how they are mixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ._validate import check_alpha, check_choice, check_k_bounds, check_logits, check_temperature
from .bh import _arange, _bh_count, bh_thresholds
from .pvalues import (
    _conformal_pvalues,
    _empirical_null_pvalues,
    _standardized_pvalues,
    _tempered,
    apply_temperature,
    empirical_null_pvalues,
    normal_tail,
)
from .router_count import (
    conformal_thresholds,
    count_by_buckets,
    count_calibrated,
    count_rank_consistent,
    descending_order,
    normal_cutoffs,
)

if TYPE_CHECKING:
    from .calibration import Calibration

WEIGHT_RULES = ("model", "softmax", "renormalize")
PVALUE_METHODS = ("empirical", "calibrated", "standardized")
SELECTIONS = ("pvalue", "router")


@dataclass(frozen=True)
class RoutingResult:
    """The experts chosen for T tokens out of E, padded to width W."""

    indices: torch.Tensor  # (T, W) int64, expert ids; sentinel E in unused slots
    weights: torch.Tensor  # (T, W) mixing weights, 0 in unused slots
    counts: torch.Tensor  # (T,) int64, experts chosen per token (<= W)
    num_experts: int  # E, which is also the sentinel value

    @property
    def mask(self) -> torch.Tensor:
        """(T, E) bool: True where expert e is chosen for token t."""
        t = self.indices.shape[0]
        m = torch.zeros(t, self.num_experts + 1, dtype=torch.bool, device=self.indices.device)
        return m.scatter(1, self.indices, True)[:, : self.num_experts]


def _finish(
    probs: torch.Tensor,
    order: torch.Tensor,
    counts: torch.Tensor,
    width: int,
    *,
    renormalize: bool,
    out_dtype: torch.dtype,
    full: bool = False,
) -> RoutingResult:
    """Take the first ``counts[t]`` experts of ``order[t]`` (ranked best first), pad to ``width``.

    probs: (T, E) float32 softmax; order: (T, >=width) expert ids by preference; counts: (T,).
    ``full``: every count is ``width`` (a fixed-width strategy), so no slot is padded and the
    mask is skipped (multiplying by an all-true mask changes no bit).
    """
    num_experts = probs.shape[-1]
    idx = order[:, :width]  # (T, W)
    if full:
        indices, weights = idx, probs.gather(1, idx)  # (T, W), (T, W)
    else:
        used = _arange(0, width, idx.device) < counts.unsqueeze(-1)  # (T, W)
        indices = torch.where(used, idx, num_experts)  # (T, W), sentinel E
        weights = probs.gather(1, idx) * used  # (T, W)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return RoutingResult(indices=indices, weights=weights.to(out_dtype), counts=counts, num_experts=num_experts)


class Strategy:
    """Base class: subclasses implement :meth:`_choose`.

    ``route(logits, *, layer, model_top_k, norm_topk_prob)`` validates the logits, computes the
    softmax in float32 (as transformers' routers do) and returns a :class:`RoutingResult` whose
    weights have the logits' dtype.
    """

    weight_rule: str = "model"
    name: str = "strategy"
    fixed_width: bool = False  # every token gets exactly W experts (no padding slot), e.g. TopK

    def route(
        self,
        logits: torch.Tensor,
        *,
        layer: int | None = None,
        model_top_k: int | None = None,
        norm_topk_prob: bool = False,
    ) -> RoutingResult:
        """Choose experts for router logits of shape (T, E).

        Parameters
        ----------
        logits : torch.Tensor, shape (T, E)
        layer : int, optional
            MoE-layer ordinal (needed by the calibrated null).
        model_top_k : int, optional
            The model's own k; the default ``max_k`` of the variable-k strategies.
        norm_topk_prob : bool, default False
            The model's weight convention, used by ``weight_rule="model"``.
        """
        check_logits(logits)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # (T, E)
        order, counts, width = self._choose(logits, probs, layer=layer, model_top_k=model_top_k)
        renorm = {"model": norm_topk_prob, "softmax": False, "renormalize": True}[self.weight_rule]
        return _finish(probs, order, counts, width, renormalize=renorm, out_dtype=logits.dtype, full=self.fixed_width)

    def _choose(self, logits, probs, *, layer, model_top_k):  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-able parameters."""
        params = {k: v for k, v in vars(self).items() if k != "calibration" and not k.startswith("_")}
        return {"name": self.name, **params}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({params})"


def _check_weight_rule(rule: str) -> str:
    return check_choice(rule, WEIGHT_RULES, name="weight_rule")


def _resolve_max_k(max_k: int | None, model_top_k: int | None, num_experts: int, min_k: int) -> int:
    k = max_k if max_k is not None else (model_top_k if model_top_k is not None else num_experts)
    check_k_bounds(min_k, k, num_experts)
    return k


class TopK(Strategy):
    """The standard router: the k experts of highest probability (ties by index, as torch.topk).

    Parameters
    ----------
    k : int
        Experts per token, 1 <= k <= E.
    weight_rule : {"model", "softmax", "renormalize"}, default "model"
    """

    name = "topk"
    fixed_width = True

    def __init__(self, k: int, *, weight_rule: str = "model") -> None:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.weight_rule = _check_weight_rule(weight_rule)

    def _choose(self, logits, probs, *, layer, model_top_k):
        if self.k > probs.shape[-1]:
            raise ValueError(f"k must be <= the number of experts ({probs.shape[-1]}), got {self.k}")
        order = torch.topk(probs, self.k, dim=-1).indices  # (T, k), same call as the routers
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

    def __init__(self, p: float, *, min_k: int = 1, max_k: int | None = None, weight_rule: str = "model") -> None:
        check_alpha(p, name="p")
        check_k_bounds(min_k, max_k)
        self.p, self.min_k, self.max_k = float(p), min_k, max_k
        self.weight_rule = _check_weight_rule(weight_rule)

    def _choose(self, logits, probs, *, layer, model_top_k):
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

    def __init__(
        self, beta: float, *, min_k: int = 1, max_k: int | None = None, weight_rule: str = "model"
    ) -> None:
        check_alpha(beta, name="beta")
        check_k_bounds(min_k, max_k)
        self.beta, self.min_k, self.max_k = float(beta), min_k, max_k
        self.weight_rule = _check_weight_rule(weight_rule)

    def _choose(self, logits, probs, *, layer, model_top_k):
        width = _resolve_max_k(self.max_k, model_top_k, probs.shape[-1], self.min_k)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # (T, E)
        counts = (sorted_p >= self.beta * sorted_p[:, :1]).sum(dim=-1).clamp(self.min_k, width)
        return order, counts, width


class BH(Strategy):
    """Benjamini-Hochberg routing: a variable number of experts per token, set by alpha.

    Each token's E p-values come from ``pvalues`` (tests of narrower nulls than "expert e is not
    needed", see "What alpha bounds"); BH at level alpha gives
    the count :math:`\\hat k = \\max\\{k : p_{(k)} \\le k\\alpha/E\\}` (Benjamini & Hochberg
    1995), clamped to [min_k, max_k]. ``selection`` says which :math:`\\hat k` experts run.

    Selection and what the FDR statement covers:

    * ``"pvalue"`` - the :math:`\\hat k` smallest p-values (BH's rejection set; after a clamp,
      still in ascending p-value order). Equal p-values are taken in the router's order (larger
      logit first, then lower index), so a tie, e.g. at the conformal floor 1/(n+1), goes to the
      expert the router prefers. Without the clamp, the FDR of this set is
      :math:`\\le \\alpha E_0/E` under independent or PRDS p-values valid for their null.
    * ``"router"`` - the count :math:`\\hat k` is BH's rejection count on the same p-values, but
      the experts are the router's top :math:`\\hat k` by probability (``torch.topk`` of the
      softmax, the model's own call). What is covered: the number :math:`\\hat k` is that of a
      rejection set whose FDR is controlled as above. What is not: the identities. The set run
      is not BH's rejection set, and no FDR statement holds for it in general. Two cases where
      one does: (1) rank-consistent p-values (``"empirical"``, ``"standardized"``: p decreases
      with the logit within a token) - the two sets coincide up to ties, so the statement above
      holds for the experts run; (2) if the router ranks every needed expert above every
      unneeded one (an assumption about the router, which the p-values cannot check), the
      router's top :math:`\\hat k` has at most as many unneeded experts as BH's set of the same
      size, so its FDR is no larger. With ``"calibrated"`` (one null per expert) neither need
      hold. The count is computed without sorting the p-values (see
      :mod:`bh_routing.core.router_count`), exactly equal to BH's.

    What alpha bounds. BH bounds the expected share of its own rejections that are null *for the
    hypothesis the p-values test* by alpha * E0 / E when a token's p-values are independent or
    positively dependent: for ``pvalues="calibrated"`` with the "unrouted" null, the share of BH's
    discoveries outside the model's top-k (given exchangeable calibration; see
    :mod:`bh_routing.core.pvalues`); ``min_k``'s forced experts are not discoveries. It does not
    bound the share of selected experts that are *not needed*: that is measured against an
    ablation oracle by the run's ``fdr_oracle`` step (:mod:`bh_routing.analysis.oracle`); on the
    embedded model, with the calibrated null, it exceeds alpha at the small alpha that save
    compute (RESULTS.md).

    Parameters
    ----------
    alpha : float in (0, 1], default 0.05
        BH's level: larger alpha, more experts (see "What alpha bounds").
    temperature : float > 0, default 1.0
        Spreads each token's logits about their median by 1/temperature (softmax temperature);
        no effect with ``pvalues="empirical"`` or ``"standardized"`` (scale-free), fewer experts
        above 1 and more below 1 with ``pvalues="calibrated"``. See :mod:`bh_routing.core.pvalues`.
    min_k : int, default 1
        Every token needs at least one expert.
    max_k : int or None, default None
        The model's top-k (else E). Larger lets hard tokens use more experts than the model.
    pvalues : {"empirical", "calibrated", "standardized"}, default "empirical"
        The per-token empirical null, the per-expert calibrated (conformal) null, or the
        standardised scores with a calibrated pooled tail; see :mod:`bh_routing.core.pvalues`.
    calibration : Calibration, optional
        Required with ``pvalues="calibrated"`` or ``"standardized"``.
    selection : {"pvalue", "router"}, default "pvalue"
        Which experts the count picks; see above.
    weight_rule : {"model", "softmax", "renormalize"}, default "model"
    """

    name = "bh"

    def __init__(
        self,
        alpha: float = 0.05,
        *,
        temperature: float = 1.0,
        min_k: int = 1,
        max_k: int | None = None,
        pvalues: str = "empirical",
        calibration: Calibration | None = None,
        selection: str = "pvalue",
        weight_rule: str = "model",
    ) -> None:
        self.alpha = check_alpha(alpha)
        self.temperature = check_temperature(temperature)
        check_k_bounds(min_k, max_k)
        check_choice(pvalues, PVALUE_METHODS, name="pvalues")
        check_choice(selection, SELECTIONS, name="selection")
        if pvalues != "empirical" and calibration is None:
            raise ValueError(f"pvalues={pvalues!r} needs a calibration (bh-routing calibrate)")
        if pvalues == "standardized":
            calibration.standardized_null(0)  # a format-1 file says here that it must be redone
        self.min_k, self.max_k, self.pvalues = min_k, max_k, pvalues
        self.calibration = calibration
        self.selection = selection
        self.weight_rule = _check_weight_rule(weight_rule)
        self._thresholds: dict = {}  # (layer, alpha, pvalues) -> conformal score thresholds (router count)

    def p_values(self, logits: torch.Tensor, *, layer: int | None = None) -> torch.Tensor:
        """The (T, E) p-values this strategy tests."""
        if self.pvalues == "empirical":
            return empirical_null_pvalues(logits, temperature=self.temperature)
        if layer is None:
            raise ValueError(f"pvalues={self.pvalues!r} needs the MoE layer index")
        if self.pvalues == "standardized":
            return self.calibration.standardized_pvalues(logits, layer, temperature=self.temperature)
        return self.calibration.pvalues(logits, layer, temperature=self.temperature)

    def _checked_pvalues(self, logits: torch.Tensor, layer: int | None) -> torch.Tensor:
        """:meth:`p_values` of logits that :meth:`route` validated: no second pass over them
        (on a GPU that pass is a host read)."""
        if self.pvalues == "empirical":
            return _empirical_null_pvalues(logits, self.temperature)
        if layer is None:
            raise ValueError(f"pvalues={self.pvalues!r} needs the MoE layer index")
        cal = self.calibration
        cal._check_layer(logits, layer)
        if self.pvalues == "standardized":
            table, count = cal.standardized_null(layer)
            return _standardized_pvalues(logits, table, count, self.temperature)
        return _conformal_pvalues(logits, cal.null_sorted[layer], cal.null_count[layer], self.temperature)

    def _choose(self, logits, probs, *, layer, model_top_k):
        width = _resolve_max_k(self.max_k, model_top_k, probs.shape[-1], self.min_k)
        if self.selection == "router":
            order = torch.topk(probs, width, dim=-1).indices  # (T, W): the router's own call
            return order, self._count(logits, layer, width).clamp(min=self.min_k), width
        if self.pvalues == "standardized" and logits.device.type == "cpu" and logits.dtype != torch.float64:
            # rank-consistent: the p-value order with ties by the logit is the logits' descending
            # order (router_count.descending_order); no (T, E) p-values needed
            return descending_order(logits, width), self._count(logits, layer, width).clamp(min=self.min_k), width
        p = self._checked_pvalues(logits, layer)  # (T, E); route() validated the logits
        # p-values built here are valid by construction: skip re-validation on the hot path
        counts, order = _bh_count(p, self.alpha, self.min_k, width, width=width, preference=logits)
        return order, counts, width  # (T, W), (T,)

    def _count(self, logits: torch.Tensor, layer: int | None, width: int) -> torch.Tensor:
        """BH's count (T,), clamped to ``width`` but not to min_k, without sorting p-values."""
        if self.pvalues != "empirical":
            if layer is None:
                raise ValueError(f"pvalues={self.pvalues!r} needs the MoE layer index")
            self.calibration._check_layer(logits, layer)
        if logits.device.type != "cpu":  # one generic pass; the CPU paths below avoid its searches
            return count_by_buckets(self._checked_pvalues(logits, layer), self.alpha, width)
        n = logits.shape[-1]
        if self.pvalues == "calibrated":
            z = apply_temperature(logits, self.temperature).to(torch.float32)  # as conformal_pvalues
            return count_calibrated(z, self._conformal_thresholds(layer), width)
        z = _tempered(logits, self.temperature)  # (T, E) as the full p-value paths
        if self.pvalues == "standardized":
            cut = self._conformal_thresholds(layer)[0].flip(0)  # (E,): column j is rank E - j

            def meets(neg, j0):
                return (-neg).to(torch.float32) > cut[j0:]  # as pooled_tail's scores

            return count_rank_consistent(z, width, meets, above_median=bool(cut.min() >= 0))
        x = normal_cutoffs(self.alpha, n, z.dtype)
        t = bh_thresholds(self.alpha, n, z.dtype).flip(0)

        def meets(neg, j0):
            return neg <= x.flip(0)[j0:] if x is not None else normal_tail(neg) <= t[j0:]

        return count_rank_consistent(z, width, meets, above_median=bool(t.max() < 0.5))

    def _conformal_thresholds(self, layer: int) -> torch.Tensor:
        """Cached (E', E) score thresholds of this layer's conformal null (see router_count)."""
        key = (layer, self.alpha, self.pvalues)
        if key not in self._thresholds:
            cal = self.calibration
            if self.pvalues == "standardized":
                table, count = cal.standardized_null(layer)
                table, count = table.reshape(1, -1), count.reshape(1)
            else:
                table, count = cal.null_sorted[layer], cal.null_count[layer]
            self._thresholds[key] = conformal_thresholds(table, count, self.alpha, cal.num_experts)
        return self._thresholds[key]
