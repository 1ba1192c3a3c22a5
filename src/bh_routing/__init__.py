"""bh-routing: variable-k Mixture-of-Experts routing with the Benjamini-Hochberg procedure.

The core (this namespace's statistics) never imports transformers; the model layer
(``bh_routing.models``: ``patched``, ``load_model``, ...) is imported lazily on first use.
"""

from importlib import import_module

from . import core as _core
from .core import (
    BH,
    BHRoutingError,
    Calibration,
    CalibrationBuilder,
    CalibrationMismatchError,
    Entropy,
    RoutingResult,
    Strategy,
    StrategyContractError,
    StrategySpecError,
    TopK,
    TopP,
    WeightRatio,
    apply_temperature,
    bh_adjust,
    bh_count,
    bh_select,
    conformal_pvalues,
    empirical_null_pvalues,
    register,
    spec_of,
    standardized_pvalues,
    strategy_from_spec,
)

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access (keeps `import bh_routing` light)
_LAZY = {
    "patched": "bh_routing.models",
    "load_model": "bh_routing.models",
    "inspect_model": "bh_routing.models",
    "Recorder": "bh_routing.models",
    "default_eval_text": "bh_routing.embedded",
    "default_eval_texts": "bh_routing.embedded",
    "certified_strategy": "bh_routing.models.certificate",
    "RunConfig": "bh_routing.study",
    "Study": "bh_routing.study",
    "run": "bh_routing.study",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bh_routing' has no attribute {name!r}")


__all__ = [*_core.__all__, *_LAZY]
