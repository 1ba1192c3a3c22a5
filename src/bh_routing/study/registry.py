"""The registry of pipeline steps and derived summaries: name -> function, with what it needs.

A **step** computes one JSON-able result from the model (``compute(ctx)``) and is cached in
``OUT/.steps/<name>.json``; a **summary** computes entries of ``results["derived"]`` from finished
steps only (no model). Both are registered at import time: steps by the modules of
:mod:`bh_routing.study.steps`, summaries by :mod:`bh_routing.study.summaries` (see
:mod:`bh_routing.study.pipeline` for how to add one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.registry import Registry

if TYPE_CHECKING:
    from ..core import Calibration
    from .config import RunConfig
    from .inputs import Inputs


@dataclass
class Context:
    """What a step's ``compute`` gets: the run's inputs, its folder, the steps finished so far."""

    inputs: Inputs
    out: Path
    results: dict = field(default_factory=dict)  # name -> data of the steps finished so far
    calibration: Calibration | None = None  # the user's, or the one the calibration step fitted

    @property
    def cfg(self) -> RunConfig:
        return self.inputs.cfg

    @property
    def model(self):
        return self.inputs.model

    @property
    def tokenizer(self):
        return self.inputs.tokenizer

    @property
    def routing(self):
        """The model's routing shape (``models.ModelInfo``: num_moe_layers, num_experts, top_k, …)."""
        return self.inputs.routing

    @property
    def variant(self) -> str:
        """The reported BH variant: the configured one, or what the ``bh_default`` step chose."""
        return reported_variant(self.cfg, self.results)

    @property
    def rs(self):
        """The routing settings of the studies (``analysis.settings.RoutingSettings``), with :attr:`variant`."""
        return replace(self.inputs.settings, variant=self.variant)


def reported_variant(cfg: RunConfig, steps: dict) -> str:
    """The BH variant the single-setting analyses use: ``cfg.bh_pvalues``, or with "auto" the
    ``bh_default`` step's choice (before that step ran: the first variant swept without "-wide")."""
    if "bh_default" in steps:
        return steps["bh_default"]["chosen"]
    if cfg.bh_pvalues != "auto":
        return cfg.bh_pvalues
    return next((v for v in cfg.pvalues if "wide" not in v), cfg.pvalues[0])


def _always(cfg) -> bool:
    return True


@dataclass(frozen=True)
class Step:
    """One named computation of a run.

    name : key in ``results["steps"]`` and the cache file ``.steps/<name>.json``
    compute : ``(Context) -> JSON-able`` result, or None when there is nothing to do under this config
    needs : steps whose results (or side state, e.g. the calibration) ``compute`` reads; run first
    groups : the commands that compute it (``run``, ``sweep``, ``eval``, ``calibrate``, ``lm-eval``, …)
    reads_text : ``(RunConfig) -> bool``: whether it reads the evaluation/calibration sequences
    check : ``(RunConfig) -> None``, raising a BHRoutingError; runs before the model loads
    restore : ``(Context, data) -> None``: reload side state when a cached result is reused
    files : files the step writes into the output folder; a cached result counts only if they exist
    """

    name: str
    compute: Callable[[Context], Any]
    needs: tuple[str, ...] = ()
    groups: tuple[str, ...] = ("run",)
    reads_text: Callable[[Any], bool] = _always
    check: Callable[[Any], None] | None = None
    restore: Callable[[Context, Any], None] | None = None
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Summary:
    """Entries of ``results["derived"]`` from finished steps: ``compute(steps, inputs) -> dict``.

    Called when every step in ``needs`` is among the finished steps; the dict it returns is merged
    into ``derived`` (so one summary may add several keys, or none).
    """

    name: str
    compute: Callable[[dict, Any], dict]
    needs: tuple[str, ...] = ()


STEPS: Registry = Registry("step")
SUMMARIES: Registry = Registry("summary")


def register_step(step: Step) -> Step:
    """Add ``step`` to the registry (its ``needs`` must be registered already); returns it."""
    missing = [n for n in step.needs if n not in STEPS]
    if missing:
        raise ValueError(f"step {step.name!r} needs unregistered steps {missing}")
    return STEPS.add(step)


def register_summary(summary: Summary) -> Summary:
    return SUMMARIES.add(summary)


def step_groups() -> dict[str, tuple[str, ...]]:
    """Command -> the steps it computes, in registration order."""
    groups: dict[str, list[str]] = {}
    for step in STEPS.values():
        for g in step.groups:
            groups.setdefault(g, []).append(step.name)
    return {g: tuple(names) for g, names in groups.items()}


def closure(names) -> tuple[str, ...]:
    """``names`` and every step they need, in registration order (which respects ``needs``)."""
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise ValueError(f"unknown steps {unknown}; available: {', '.join(STEPS)}")
    want, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n not in want:
            want.add(n)
            todo += STEPS[n].needs
    return tuple(n for n in STEPS if n in want)
