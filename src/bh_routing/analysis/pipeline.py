"""A run's computation: registered steps (resuming finished ones) and the results document.

How to add to a run
===================
**A step** (something computed from the model): a new module ``analysis/steps/<name>.py`` with one
registration at module level; every module of :mod:`bh_routing.analysis.steps` is imported
automatically (``seed`` first, then the others by name), nothing else to edit::

    from ..registry import Context, Step, register_step

    def _compute(ctx: Context):              # ctx.cfg, ctx.model, ctx.tokenizer, ctx.routing (ModelInfo:
        ...                                  # num_moe_layers, num_experts, top_k, computed once per run),
        return {...}                         # ctx.inputs.eval_seqs (N, S), ctx.calibration, ctx.results
                                             # (finished steps), ctx.out; return JSON-able data, or None
                                             # when there is nothing to do under this config
    register_step(Step("mystep", _compute, needs=("calibration",), groups=("run",)))

``needs``: steps computed first (``calibration`` when you route with calibrated p-values);
``groups``: the commands that compute it (``run``, ``sweep``, ``eval``, ``calibrate``, ``lm-eval``,
or a new name for a new command); ``reads_text=lambda cfg: False`` when it reads no evaluation
text; ``check(cfg)`` for checks that must run before the model loads (raise a
:class:`~bh_routing.core.BHRoutingError`, e.g. :class:`~bh_routing.analysis.config.ConfigError`).
The result lands in ``results["steps"]["mystep"]`` and ``OUT/.steps/mystep.json`` (reused when the
configuration, model and package version are unchanged). New settings: a field with a comment in
:class:`~bh_routing.analysis.config.RunConfig` and its check in ``RunConfig.validate`` (single
values through the core's validators).

**A derived summary** (numbers computed from finished steps, no model): in the same module,
``register_summary(Summary("mystep", fn, needs=("mystep",)))`` with ``fn(steps, inputs) -> dict``;
the dict is merged into ``results["derived"]``.

**A figure and a RESULTS.md section**: a new module ``report/<name>.py`` (imported automatically)::

    from .base import fmt, plt, save_figure, table
    from .registry import Figure, Section, register_figure, register_section

    def _draw(res: dict, path: Path) -> Path:
        fig, ax = plt.subplots(figsize=(8, 5))
        ...
        return save_figure(fig, path)

    def _section(res: dict, figures: list[str]) -> list[str]:   # figures: names drawn in this report
        return ["## My analysis", "", "![mine](my_figure.png)", "", table(["a", "b"], rows), ""]

    register_figure(Figure("my_figure.png", _draw, needs=("mystep",)))
    register_section(Section("mystep", _section, needs=("mystep",), order=100))

``needs`` are keys of ``results["steps"]`` or ``results["derived"]``; the figure is drawn and the
section written only when all are present. ``order`` places the section (the seed sections use
10-90, the downstream section 95; the "Reproduce" section always comes last).

**A command**: call :class:`bh_routing.study.Study` (or ``bh_routing.study.run``) with the step's
group; the CLI command only parses and calls (see ``cli.py``).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch

from . import steps as _steps  # noqa: F401  (imports every step module: fills the registry)
from .inputs import Inputs
from .outputs import STEPS_DIR, atomic_write_text, environment
from .registry import STEPS, SUMMARIES, Context, closure, step_groups

STEP_GROUPS = step_groups()  # command -> the steps it computes


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_key(inputs: Inputs) -> str:
    """A step is reused only for the same configuration, model and package version."""
    from .. import __version__
    from ..models import model_fingerprint

    cfg = inputs.requested_cfg or inputs.cfg  # the key of the configuration as given (before "auto" is resolved)
    blob = json.dumps(
        {"config": cfg.to_dict(), "model": model_fingerprint(inputs.model), "version": __version__}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cached(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):  # a damaged cache file is recomputed
        return None


def run_steps(inputs: Inputs, out: Path, names: tuple[str, ...]) -> dict:
    """Compute ``names`` and what they need (reusing finished steps of the same key); all finished steps."""
    todo = set(closure(names))
    out.mkdir(parents=True, exist_ok=True)
    cache = out / STEPS_DIR
    cache.mkdir(exist_ok=True)
    key = step_key(inputs)
    ctx = Context(inputs, out, {}, inputs.calibration)
    for step in STEPS.values():
        path = cache / f"{step.name}.json"
        cached = _cached(path)
        if cached is not None and cached.get("key") == key and all((out / f).is_file() for f in step.files):
            if step.restore is not None:
                step.restore(ctx, cached["data"])
            ctx.results[step.name] = cached["data"]
        elif step.name in todo:
            set_seed(inputs.cfg.seed)
            data = step.compute(ctx)
            if data is not None:
                ctx.results[step.name] = data
                atomic_write_text(path, json.dumps({"key": key, "data": data}))
    return ctx.results


def assemble(inputs: Inputs, steps: dict) -> dict:
    """The results document: configuration, environment, model, raw steps and derived summaries."""
    derived: dict = {}
    for summary in SUMMARIES.values():
        if all(n in steps for n in summary.needs):
            derived.update(summary.compute(steps, inputs))
    config = inputs.cfg.to_dict()
    if inputs.eval_seqs is None:  # no perplexity evaluation in this run (e.g. lm-eval only)
        config.update(eval_sequences=0, calib_sequences=0)
    return {
        "config": config,
        "environment": environment(),
        "model": {**inputs.routing.to_dict(), "name": inputs.model_name},
        "eval_domains": inputs.eval_domains,
        **({} if inputs.split is None else {"evaluation": inputs.split.summary()}),
        "steps": steps,
        "derived": derived,
    }
