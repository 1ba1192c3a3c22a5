"""Experiments on a model under routing strategies: registered steps, sweeps, quality, statistics.

``Study`` and ``run`` (which also write the report) live one layer up, in :mod:`bh_routing.study`
(also ``bh_routing.Study``, ``bh_routing.run``).
"""

from .config import ConfigError, RunConfig, load_config_file
from .outputs import RunError
from .registry import STEPS, Step, Summary, register_step, register_summary

__all__ = ["ConfigError", "RunConfig", "RunError", "STEPS", "Step", "Summary", "load_config_file", "register_step",
           "register_summary"]


def __getattr__(name: str):
    if name in ("Study", "run"):  # they write the report, a layer above: say where they are now
        raise AttributeError(f"bh_routing.analysis.{name} moved to bh_routing.study: use `from bh_routing import {name}`")
    raise AttributeError(f"module 'bh_routing.analysis' has no attribute {name!r}")
