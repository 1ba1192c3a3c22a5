"""``Study`` and ``run``: a run driven step by step (the notebook's way) or all at once (the command's).

The top of the run package: above the analysis library and :mod:`bh_routing.report` (figures,
RESULTS.md); the CLI and the notebook call this.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .config import RunConfig
from .inputs import prepare
from .results import RESULTS_JSON, RunError, export, out_lock, read_results
from .pipeline import STEP_GROUPS, assemble, compute_results, step_seconds
from .registry import STEPS, closure, reported_variant
from ..report import FIGURES


class Study:
    """A run driven step by step (the notebook's way) or all at once (the command's way).

    >>> study = Study(RunConfig(quick=True), "runs/demo")      # validates, loads the model
    >>> results = study.run("alpha")                            # computes (or reuses) a step
    >>> study.figure("alpha_sensitivity.png")                   # draws one figure
    >>> study.export()                                          # JSON, CSV, figures, RESULTS.md

    ``steps``: the steps this study may compute (default: all); the evaluation text is read only
    when one of them (or a step it needs) reads it. ``force``: replace another model's results in
    ``out`` instead of refusing.
    """

    def __init__(self, config: RunConfig, out: str | Path, *, model=None, tokenizer=None,
                 steps: tuple[str, ...] | None = None, force: bool = False) -> None:
        self.out = Path(out)
        self.allowed = closure(steps if steps is not None else tuple(STEPS))
        requested = config.validate()  # the configuration is read here, once: validated, made effective,
        cfg = requested.effective()
        settings = cfg.routing()  # and its routing settings made (Inputs.settings)
        for name in self.allowed:  # checks that need no model: before it loads
            if STEPS[name].check is not None:
                STEPS[name].check(cfg)
        text = any(STEPS[name].reads_text(cfg) for name in self.allowed)
        self.inputs = prepare(cfg, self.out, settings=settings, model=model, tokenizer=tokenizer, text=text,
                              force=force, requested=requested)
        self.steps: dict = {}
        self._results: dict | None = None  # assembled results, cached until a step is added

    @property
    def config(self) -> RunConfig:
        """The effective configuration, as validated (never changed during the study)."""
        return self.inputs.cfg

    @property
    def routing(self):
        """The studies' routing settings (:class:`~bh_routing.analysis.settings.RoutingSettings`), with the
        reported BH variant: the configured one, or the one the ``bh_default`` step chose."""
        return replace(self.inputs.settings, variant=reported_variant(self.config, self.steps))

    def run(self, *steps: str) -> dict:
        """Compute the named steps (all when none are named), reusing finished ones; the results dict."""
        names = closure(steps) if steps else self.allowed
        outside = [n for n in names if n not in self.allowed]
        if outside:
            raise ValueError(f"steps {outside} are outside this study's steps {list(self.allowed)}")
        with out_lock(self.out):
            self._results = compute_results(self.inputs, self.out, names, self.steps)
        self.steps = self._results["steps"]
        return self._results

    @property
    def results(self) -> dict:
        """The results document of the steps so far (assembled by :meth:`run`; before any run, here)."""
        if self._results is None:
            self._results = assemble(self.inputs, self.steps, seconds=step_seconds(self.out))
        return self._results

    def figure(self, name: str) -> Path:
        """Draw one of the registered figures from the results so far; returns its path."""
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; available: {', '.join(FIGURES)}")
        with out_lock(self.out):
            return FIGURES[name].draw(self.results, self.out / name)

    def export(self) -> list[Path]:
        """Write the JSON, CSV, figures and RESULTS.md; returns their paths and those of the files
        this study's finished steps wrote (``calibration.safetensors``, ``certificate.json``).

        The folder's earlier results of the same model are merged: a study of the steps that add to
        a run only (``downstream``) adds its steps to them; a full study keeps their downstream step.
        """
        with out_lock(self.out):
            written = export(self._merged(), self.out)
        kept = [self.out / f for name in self.steps for f in STEPS[name].files if (self.out / f).is_file()]
        return written + kept

    def _merged(self) -> dict:
        results = self.results
        if not (self.out / RESULTS_JSON).is_file():
            return results
        try:
            old = read_results(self.out)
        except RunError:
            return results
        if old["model"].get("name") != results["model"]["name"]:
            return results
        extra = set(STEP_GROUPS.get("lm-eval", ()))  # steps that add to a run rather than make one
        if set(self.allowed) <= extra | {n for e in extra for n in STEPS[e].needs}:  # an lm-eval study
            return {**old, "steps": {**old["steps"], **{n: v for n, v in results["steps"].items() if n in extra}}}
        kept = {n: old["steps"][n] for n in extra if n in old["steps"] and n not in results["steps"]}
        return {**results, "steps": {**results["steps"], **kept}} if kept else results


def run(config: RunConfig, out: str | Path, *, steps: tuple[str, ...] = tuple(STEPS), force: bool = False) -> dict:
    """Validate, compute ``steps`` (resuming finished ones), and write every output; the results dict."""
    study = Study(config, out, steps=steps, force=force)
    with out_lock(study.out):  # one lock for the whole run: a second run into ``out`` is refused
        study.run()
        study.export()
    return study.results


def apply_certificate(path: str | Path, config: RunConfig, out: str | Path) -> tuple[dict, dict]:
    """A saved certificate's settings on ``config``'s evaluation sequences, each cut to the tokens it
    was certified on (``bh-routing certify --certificate``): ``(certificate, held-out check)``
    (:func:`~bh_routing.analysis.certify.held_out_check`, which refuses another model). Writes nothing."""
    from ..analysis.certify import held_out_check, load_certificate

    cert = load_certificate(path)
    requested = config.validate()
    inputs = prepare(requested.effective(), Path(out), requested=requested)
    return cert, held_out_check(inputs.model, inputs.eval_seqs[:, : cert["seq_len"]], cert)
