"""The seven steps of the original notebook (calibration, baseline, α and temperature sweeps,
frontier, token level, comparative); the summaries derived from them are in :mod:`..summaries`."""

from __future__ import annotations

from ...core import Calibration
from dataclasses import replace

from ...analysis import data, experiments, knobs, variants
from ...analysis.settings import parse_variant
from ...core.families import RANK_BASELINES
from ..config import AUTO, ConfigError, RunConfig
from ..registry import Context, Step, register_step
from ..results import CALIBRATION_FILE


def _methods(cfg: RunConfig) -> set[str]:
    """The p-value methods the analyses of ``cfg`` test."""
    names = [*cfg.pvalues] + ([] if cfg.bh_pvalues == AUTO else [cfg.bh_pvalues])
    downstream = [cfg.downstream_pvalues] if cfg.downstream_tasks else []
    return {parse_variant(v)[0] for v in names + downstream}


def needs_calibration(cfg: RunConfig) -> bool:
    """Whether any analysis of ``cfg`` tests calibrated or standardised p-values."""
    return bool(_methods(cfg) - {"empirical"})


def _check_calibration_file(cfg: RunConfig) -> None:
    """A format-1 calibration file has no standardised null: say so before the model loads."""
    if cfg.calibration is None or "standardized" not in _methods(cfg):
        return
    from safetensors import safe_open

    try:
        with safe_open(cfg.calibration, framework="pt") as f:
            version = (f.metadata() or {}).get("format_version", "1")
    except Exception:  # not a safetensors file: Calibration.load says so when the run reads it
        return
    if version == "1":
        raise ConfigError(
            f"calibration {cfg.calibration} has no standardised null (calibration format 1): run "
            "`bh-routing calibrate` again, or leave standardized out of --pvalues"
        )


def _calibration(ctx: Context):
    """Fit the calibrated null on the calibration split (unless the user gave one); its summary."""
    if ctx.calibration is None:
        if not needs_calibration(ctx.cfg):
            return None
        cfg = ctx.cfg
        ctx.calibration = experiments.fit_calibration(
            ctx.model, ctx.inputs.calib_seqs, routing=ctx.routing, null=cfg.null, reservoir_size=cfg.reservoir_size,
            seed=cfg.seed, model_name=ctx.inputs.model_name,
        )
        ctx.calibration.save(ctx.out / CALIBRATION_FILE)
    return ctx.calibration.summary()


def _restore_calibration(ctx: Context, data) -> None:
    if ctx.calibration is None:
        ctx.calibration = Calibration.load(ctx.out / CALIBRATION_FILE)


def _alpha(ctx: Context):
    rs = replace(ctx.rs, alphas=tuple(sorted(set(ctx.cfg.alphas) | {ctx.cfg.alpha})))
    wide_k = experiments.wide_max_k(ctx.routing)
    return experiments.alpha_sweep(ctx.model, ctx.inputs.eval_seqs, rs, ctx.calibration, wide_k=wide_k)


def _bh_default(ctx: Context):
    """Resolve ``bh_pvalues="auto"`` on the calibration windows; later steps read the choice from
    this step's result (:attr:`Context.variant`), the configuration stays as given."""
    configured = None if ctx.cfg.bh_pvalues == AUTO else ctx.cfg.bh_pvalues
    return variants.choose_variant(ctx.model, ctx.inputs.calib_seqs, ctx.rs, ctx.calibration,
                                   top_k=ctx.routing.top_k, configured=configured)


CAL = ("calibration",)
register_step(Step(
    "calibration", _calibration, groups=("run", "calibrate", "sweep", "eval"),
    reads_text=lambda cfg: cfg.calibration is None and needs_calibration(cfg),
    restore=_restore_calibration, files=(CALIBRATION_FILE,), check=_check_calibration_file,
))
register_step(Step(
    "bh_default", _bh_default, needs=CAL, groups=("run", "eval"),
    reads_text=lambda cfg: cfg.bh_pvalues == AUTO,
))


def _knobs(ctx: Context):
    """Each compared family's knob on the first calibration windows: mean k at every grid value, its
    direction, and a one-line refusal of a knob that is not monotone (before the sweeps use it)."""
    rs, top_k = ctx.rs, ctx.routing.top_k
    seqs = ctx.inputs.calib_seqs[:KNOB_WINDOWS]
    return {f: knobs.knob_profile(ctx.model, seqs, f, lambda v, f=f: rs.strategy(f, v), rs.grid(f, top_k=top_k))
            for f in rs.families if f not in RANK_BASELINES} or None


KNOB_WINDOWS = 8  # calibration windows a knob is profiled on
register_step(Step("knobs", _knobs, groups=("run", "eval"),
                   reads_text=lambda cfg: any(f not in RANK_BASELINES for f in cfg.routing().families)))
CAL = ("calibration", "bh_default")  # the single-setting steps read the chosen variant
register_step(Step("baseline", lambda ctx: experiments.baseline_inference(
    ctx.model, ctx.tokenizer, ctx.rs, ctx.calibration, data.BASELINE_PROMPTS, top_k=ctx.routing.top_k,
    new_tokens=ctx.cfg.new_tokens), needs=CAL))
register_step(Step("alpha", _alpha, needs=("calibration",), groups=("run", "sweep", "eval")))
register_step(Step("temperature", lambda ctx: experiments.temperature_sweep(
    ctx.model, ctx.inputs.eval_seqs, ctx.rs, ctx.calibration), needs=("calibration",), groups=("run", "sweep")))
register_step(Step("frontier", lambda ctx: experiments.baseline_frontier(
    ctx.model, ctx.inputs.eval_seqs, ctx.rs, top_k=ctx.routing.top_k), needs=("knobs",), groups=("run", "eval")))
register_step(Step("token_level", lambda ctx: experiments.token_level(
    ctx.model, ctx.tokenizer, ctx.rs, ctx.calibration, data.TOKEN_SENTENCE), needs=CAL))
register_step(Step("comparative", lambda ctx: experiments.comparative(
    ctx.model, ctx.tokenizer, ctx.rs, ctx.calibration, ctx.inputs.prompts, top_k=ctx.routing.top_k),
    needs=CAL, groups=("run", "eval")))
