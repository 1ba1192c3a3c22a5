"""A run's computation: registered steps (resuming finished ones) and the results document.

:func:`compute_results` is the one entry: every step of :mod:`bh_routing.study.steps` runs in
registration order when it (or a step needing it) is asked for, unless ``OUT/.steps/<name>.json``
holds its result for the same configuration, model and package version (:func:`run_steps`); then
:func:`assemble` builds the results document, with the summaries of :mod:`bh_routing.study.summaries`.
How to add a step, a summary, a figure or a command: CONTRIBUTING.md.
"""

from __future__ import annotations

import gc
import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import steps as _steps  # noqa: F401  (imports every step module: fills the registry of steps)
from . import summaries as _summaries  # noqa: F401  (fills the registry of summaries)
from .inputs import Inputs
from ..core import BHRoutingError
from ..core.files import atomic_write_text
from ..models.environment import environment
from .results import STEPS_DIR
from .registry import STEPS, SUMMARIES, Context, closure, reported_variant, step_groups

STEP_GROUPS = step_groups()  # command -> the steps it computes


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_key(inputs: Inputs) -> str:
    """A step is reused only for the same configuration, model and package version."""
    from .. import __version__
    from ..models import model_fingerprint

    blob = json.dumps(
        {"config": inputs.cfg.to_dict(), "model": model_fingerprint(inputs.model), "version": __version__}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cached(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):  # a damaged cache file is recomputed
        return None


class StepOutOfMemory(BHRoutingError, RuntimeError):
    """A step ran out of device memory at one sequence per forward pass."""


def release_memory() -> None:
    """Free what the last step left on a GPU: Python garbage (tensors held by reference cycles), then the
    CUDA caching allocator's unused blocks. On the CPU there is no cache to hand back and a full
    collection costs about 0.3 s per step with transformers loaded, so Python's own collector is left to it."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _memory_in_use(model) -> str:
    device = next(model.parameters()).device
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"on {device}"
    free, total = torch.cuda.mem_get_info(device)
    return (f"{torch.cuda.memory_allocated(device) / 2**30:.2f} GiB allocated, {(total - free) / 2**30:.2f} of "
            f"{total / 2**30:.2f} GiB in use on {device}")


def compute_step(step, ctx: Context, *, log=None):
    """``step.compute(ctx)``; on running out of device memory, again with half the batch (down to
    one sequence per forward pass), then StepOutOfMemory in one line."""
    from ..models.device import MAX_BATCH
    from ..models.memory import batch_cap, set_batch_cap

    model = ctx.inputs.model
    while True:
        set_seed(ctx.inputs.cfg.seed)
        try:
            return step.compute(ctx)
        except torch.OutOfMemoryError:
            cap = batch_cap(model) or MAX_BATCH
            release_memory()
            if cap <= 1:
                raise StepOutOfMemory(
                    f"out of memory in step {step.name} at batch 1 ({_memory_in_use(model)}); the finished steps are "
                    "saved: run the same command again to resume, with a smaller --seq-len or on a larger GPU"
                ) from None
            set_batch_cap(model, cap // 2)
            (log or _stderr)(f"out of memory in step {step.name} at batch {cap}: retrying it with batch {cap // 2}")


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
            start = time.perf_counter()
            data = compute_step(step, ctx)
            seconds = round(time.perf_counter() - start, 1)
            _stderr(f"step {step.name}: {seconds:.1f} s")
            if data is not None:
                ctx.results[step.name] = data
                atomic_write_text(path, json.dumps({"key": key, "data": data, "seconds": seconds}))
            release_memory()  # caches released between steps
    return ctx.results


def step_seconds(out: Path) -> dict[str, float]:
    """Wall seconds each finished step of ``out`` took when it was computed (from its step file; a
    step resumed from an older file has none): where a run's time went."""
    found = {}
    for name in STEPS:
        cached = _cached(Path(out) / STEPS_DIR / f"{name}.json")
        if cached is not None and "seconds" in cached:
            found[name] = cached["seconds"]
    return found


def assemble(inputs: Inputs, steps: dict, *, seconds: dict[str, float] | None = None) -> dict:
    """The results document: configuration, environment (with ``seconds``, the wall time of each step
    when it was computed: :func:`step_seconds`), model, raw steps and derived summaries."""
    derived: dict = {}
    for summary in SUMMARIES.values():
        if all(n in steps for n in summary.needs):
            derived.update(summary.compute(steps, inputs))
    config = {**inputs.cfg.to_dict(), "bh_pvalues": reported_variant(inputs.cfg, steps)}  # "auto" as resolved
    if inputs.eval_seqs is None:  # no perplexity evaluation in this run (e.g. lm-eval only)
        config.update(eval_sequences=0, calib_sequences=0)
    return {
        "config": config,
        "environment": {**environment(), "step_seconds": seconds or {}},
        "model": {**inputs.routing.to_dict(), "name": inputs.model_name},
        "eval_domains": inputs.eval_domains,
        **({} if inputs.split is None else {"evaluation": inputs.split.summary()}),
        "steps": steps,
        "derived": derived,
    }


def compute_results(inputs: Inputs, out: Path, names: tuple[str, ...], held: dict | None = None) -> dict:
    """Compute ``names`` and what they need (:func:`run_steps`), then the results document
    (:func:`assemble`) of those, every finished step of ``out`` and ``held`` (the steps a study
    holds already); its ``"steps"`` are all of them."""
    steps = {**(held or {}), **run_steps(inputs, out, names)}
    return assemble(inputs, steps, seconds=step_seconds(out))
