"""The seven steps of the original notebook (calibration, baseline, α and temperature sweeps,
frontier, token level, comparative) and the summaries derived from them."""

from __future__ import annotations

from ...core import Calibration
from .. import data, derive, experiments
from ..config import RunConfig
from ..outputs import CALIBRATION_FILE
from ..registry import Context, Step, Summary, register_step, register_summary


def needs_calibration(cfg: RunConfig) -> bool:
    """Whether any analysis of ``cfg`` tests p-values that need a calibration (BH's rule: all but empirical)."""
    methods = {*cfg.pvalues, cfg.bh_pvalues} | ({cfg.downstream_pvalues} if cfg.downstream_tasks else set())
    return any(m != "empirical" for m in methods)


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
    cfg = ctx.cfg
    sweep_cfg = RunConfig(**{**cfg.to_dict(), "alphas": sorted(set(cfg.alphas) | {cfg.alpha})})
    return experiments.alpha_sweep(ctx.model, ctx.inputs.eval_seqs, sweep_cfg, ctx.calibration)


CAL = ("calibration",)
register_step(Step(
    "calibration", _calibration, groups=("run", "calibrate", "sweep", "eval"),
    reads_text=lambda cfg: cfg.calibration is None and needs_calibration(cfg),
    restore=_restore_calibration, files=(CALIBRATION_FILE,),
))
register_step(Step("baseline", lambda ctx: experiments.baseline_inference(
    ctx.model, ctx.tokenizer, ctx.cfg, ctx.calibration, data.BASELINE_PROMPTS, top_k=ctx.routing.top_k), needs=CAL))
register_step(Step("alpha", _alpha, needs=CAL, groups=("run", "sweep", "eval")))
register_step(Step("temperature", lambda ctx: experiments.temperature_sweep(
    ctx.model, ctx.inputs.eval_seqs, ctx.cfg, ctx.calibration), needs=CAL, groups=("run", "sweep")))
register_step(Step("frontier", lambda ctx: experiments.baseline_frontier(
    ctx.model, ctx.inputs.eval_seqs, ctx.cfg, top_k=ctx.routing.top_k), groups=("run", "eval")))
register_step(Step("token_level", lambda ctx: experiments.token_level(
    ctx.model, ctx.tokenizer, ctx.cfg, ctx.calibration, data.TOKEN_SENTENCE), needs=CAL))
register_step(Step("comparative", lambda ctx: experiments.comparative(
    ctx.model, ctx.tokenizer, ctx.cfg, ctx.calibration, ctx.inputs.prompts, top_k=ctx.routing.top_k),
    needs=CAL, groups=("run", "eval")))


def _derived(steps: dict, inputs) -> dict:
    """Sweep tables, frontier verdicts, utilisation and BH-vs-top-k statistics."""
    cfg = inputs.cfg
    top_k = inputs.routing.top_k
    max_k = cfg.max_k or top_k
    kw = {"seed": cfg.seed, "n_resamples": cfg.n_resamples}
    derived: dict = {}
    alpha_runs = steps.get("alpha", [])
    frontier = steps.get("frontier", [])
    topk_run = next((r for r in frontier if r["family"] == "topk" and r["param"] == top_k), None)
    tkw = {**kw, "top_k": top_k, "max_k": max_k, "min_k": cfg.min_k, "ref": topk_run}
    bh_run = next((r for r in alpha_runs if r["family"] == f"bh-{cfg.bh_pvalues}" and r["param"] == cfg.alpha), None)
    if alpha_runs:
        derived["alpha_sensitivity"] = derive.sweep_table(alpha_runs, **tkw)
        derived["layers"] = derive.layers(alpha_runs)
    if "temperature" in steps:
        derived["temperature_sensitivity"] = derive.sweep_table(steps["temperature"], **tkw)
    if frontier:
        derived["frontier"] = derive.sweep_table(frontier, **tkw)
        if alpha_runs:
            derived["frontier_verdicts"] = derive.frontier_verdicts(alpha_runs, frontier, **kw)
    if topk_run and bh_run:
        derived["utilization"] = derive.utilization(topk_run, bh_run)
        if "comparative" in steps:
            derived["statistics"] = derive.statistics(bh_run, topk_run, steps["comparative"], top_k=top_k, **kw)
    return derived


register_summary(Summary("seed", _derived))
