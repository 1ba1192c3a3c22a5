"""Benjamini-Hochberg routing: the count from BH over each token's p-values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._paths import host_fast
from .._validate import check_alpha, check_choice, check_k_bounds, check_temperature
from ..bh import _bh_count, bh_thresholds
from ..pvalues import (
    _conformal_pvalues,
    _empirical_null_pvalues,
    _standardized_pvalues,
    _tempered,
    apply_temperature,
    empirical_null_pvalues,
)
from ..router_count import (
    conformal_thresholds,
    count_by_buckets,
    count_calibrated,
    count_rank_consistent,
    descending_order,
    normal_cutoffs,
)
from .base import Strategy, _check_weight_rule, _resolve_max_k, router_order

if TYPE_CHECKING:
    from ..calibration import Calibration

PVALUE_METHODS = ("empirical", "calibrated", "standardized")
SELECTIONS = ("pvalue", "router")


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
    knob = "alpha"
    grid = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
    label = "BH"
    color = "#d62728"

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

    def choose(self, logits, probs, *, layer, model_top_k):
        width = _resolve_max_k(self.max_k, model_top_k, probs.shape[-1], self.min_k)
        if self.selection == "router":
            order = router_order(probs, width)  # (T, W): the router's own call
            return order, self._count(logits, layer, width).clamp(min=self.min_k), width
        if self.pvalues == "standardized" and host_fast(logits) and logits.dtype != torch.float64:
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
        if not host_fast(logits):  # the static path: one generic pass, no host read, fixed shapes
            return count_by_buckets(self._checked_pvalues(logits, layer), self.alpha, width)
        n = logits.shape[-1]
        if self.pvalues == "calibrated":
            z = apply_temperature(logits, self.temperature).to(torch.float32)  # as conformal_pvalues
            columns = self._cached(("columns", layer, self.alpha), lambda: self._conformal_thresholds(layer).T.contiguous())
            return count_calibrated(z, columns, width)
        z = _tempered(logits, self.temperature)  # (T, E) as the full p-value paths
        if self.pvalues == "standardized":
            # (E,): position i is rank E - i; scores above it meet, as pooled_tail's
            cut = self._cached(("cut-std", layer, self.alpha), lambda: self._conformal_thresholds(layer)[0].flip(0))
            above = self._cached(("above-std", layer, self.alpha), lambda: bool(cut.min() >= 0))
            return count_rank_consistent(z, width, cut, strict=True, above_median=above, scratch=z is not logits)
        x = normal_cutoffs(self.alpha, n, z.dtype)
        if x is None:  # the cutoffs could not be checked exactly: the p-values themselves
            return count_by_buckets(self._checked_pvalues(logits, layer), self.alpha, width)
        cut = self._cached(("cut-emp", n, self.alpha, z.dtype), lambda: x.flip(0))  # position i: rank E - i
        above = self._cached(("above-emp", n, self.alpha), lambda: bool(bh_thresholds(self.alpha, n, z.dtype).max() < 0.5))
        return count_rank_consistent(z, width, cut, strict=False, above_median=above, scratch=z is not logits)

    def _cached(self, key, make):
        """A value of this strategy's cache (host facts of its thresholds: read once, not per call)."""
        if key not in self._thresholds:
            self._thresholds[key] = make()
        return self._thresholds[key]

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
