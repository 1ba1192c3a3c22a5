"""The analysis library: studies and statistics as functions with explicit arguments.

Each study takes the model, its sequences and the strategies (or its own small settings) and
returns JSON-able results; nothing here reads a run's configuration. A run - configuration,
inputs, steps, the results file - is :mod:`bh_routing.study` (``bh_routing.Study``,
``bh_routing.run``).
"""

import warnings
from importlib import import_module

#: names that moved to bh_routing.study; still importable from here, with a DeprecationWarning
_MOVED = ("ConfigError", "RunConfig", "RunError", "STEPS", "Step", "Summary", "load_config_file", "register_step",
          "register_summary", "Study", "run")


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(f"bh_routing.analysis.{name} moved to bh_routing.study.{name}", DeprecationWarning, stacklevel=2)
        return getattr(import_module("bh_routing.study"), name)
    raise AttributeError(f"module 'bh_routing.analysis' has no attribute {name!r}")
