"""Experiments on a model under routing strategies: sweeps, prompts, quality, statistics."""

from .config import ConfigError, RunConfig, load_config_file
from .pipeline import STEPS, RunError, Study, run

__all__ = ["ConfigError", "RunConfig", "RunError", "STEPS", "Study", "load_config_file", "run"]
