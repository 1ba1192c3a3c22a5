"""Model-free statistics core: BH, p-values, strategies, calibration (torch/numpy/scipy only)."""

from .bh import bh_adjust, bh_count, bh_select
from .errors import BHRoutingError
from .calibration import Calibration, CalibrationBuilder, CalibrationMismatchError
from .pvalues import apply_temperature, conformal_pvalues, empirical_null_pvalues, standardized_pvalues
from .strategies import BH, Entropy, RoutingResult, Strategy, TopK, TopP, WeightRatio
from .families import StrategyContractError, StrategySpecError, register, spec_of, strategy_from_spec

__all__ = [
    "BH",
    "BHRoutingError",
    "Calibration",
    "CalibrationBuilder",
    "CalibrationMismatchError",
    "Entropy",
    "RoutingResult",
    "Strategy",
    "StrategyContractError",
    "StrategySpecError",
    "TopK",
    "TopP",
    "WeightRatio",
    "apply_temperature",
    "bh_adjust",
    "bh_count",
    "bh_select",
    "conformal_pvalues",
    "empirical_null_pvalues",
    "register",
    "spec_of",
    "standardized_pvalues",
    "strategy_from_spec",
]
