"""A run, top to bottom: configuration -> inputs -> steps -> results file -> report.

Read in this order: :mod:`.config` (``RunConfig``, validated once, never changed during a run),
:mod:`.inputs` (the model, texts and split, loaded and checked before anything is written),
:mod:`.registry` and :mod:`.steps` (each step calls the analysis library with explicit
arguments), :mod:`.pipeline` (steps in order, resumed from ``OUT/.steps/``, assembled into one
results document with the summaries of :mod:`.summaries`), :mod:`.results` (the results file:
one writer, one reader; then the report),
:mod:`.api` (``Study`` and ``run``, what the command and the notebook call).
"""

from .api import Study, apply_certificate, run
from .config import ConfigError, RunConfig, load_config_file
from .registry import STEPS, Step, Summary, register_step, register_summary
from .results import RunError, read_results

__all__ = ["STEPS", "ConfigError", "RunConfig", "RunError", "Step", "Study", "Summary", "apply_certificate",
           "load_config_file", "read_results", "register_step", "register_summary", "run"]
