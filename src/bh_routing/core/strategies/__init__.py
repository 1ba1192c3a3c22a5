"""Routing strategies: router logits (T, E) -> chosen experts per token, padded to a fixed width.

:mod:`.base` holds the contract (:class:`Strategy`, :class:`RoutingResult`), :mod:`.baselines`
top-k, top-p and the weight ratio, :mod:`.bh` Benjamini-Hochberg routing, :mod:`.entropy` the
router-entropy ladder. Each family is registered once in :mod:`bh_routing.core.families`.
"""

from .base import WEIGHT_RULES, RoutingResult, Strategy
from .baselines import TopK, TopP, WeightRatio
from .bh import BH, PVALUE_METHODS, SELECTIONS
from .entropy import Entropy

__all__ = ["BH", "Entropy", "PVALUE_METHODS", "SELECTIONS", "WEIGHT_RULES", "RoutingResult", "Strategy", "TopK", "TopP", "WeightRatio"]
