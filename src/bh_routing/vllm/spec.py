"""Strategies from one-line specifications, as the vLLM plugin reads them from the environment.

The grammar and the reader live in :mod:`bh_routing.core.families` (one table of families, one
spec syntax for the command, the run, certificates and serving); this module keeps the serving
layer's names. Examples::

    bh:alpha=0.05,pvalues=empirical
    bh:alpha=0.1,pvalues=calibrated,calibration=runs/cal/calibration.safetensors
    topk:k=4
    entropy:scale=1.5
    mymodule:MyRule:scale=1.5
"""

from __future__ import annotations

from ..core.families import StrategySpecError, available, strategy_from_spec

__all__ = ["StrategySpecError", "available", "strategy_from_spec"]
