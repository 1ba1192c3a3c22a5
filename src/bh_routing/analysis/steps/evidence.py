"""Matched-k comparisons (issue #12): BH at the α that uses as many experts as each baseline, and the
verdicts, the pre-registered primary comparison (docs/preregistration.md) and the Holm-corrected grid."""

from __future__ import annotations

from .. import derive, experiments, matching
from ..registry import STEPS, Context, Step, Summary, register_step, register_summary


def _matched(ctx: Context):
    """The report's BH variant matched in mean k on the calibration windows to every top-k k and (with
    ``matched_baselines``) every adaptive baseline setting. Other swept variants are not matched (run time)."""
    cfg, top_k = ctx.cfg, ctx.routing.top_k
    frontier = ctx.results["frontier"]
    if not cfg.matched_baselines:  # top-k targets only
        frontier = [b for b in frontier if b["family"] == "topk"]
    return matching.matched_runs(
        ctx.model, ctx.inputs.calib_seqs, ctx.inputs.eval_seqs,
        make_bh=lambda method, alpha: experiments.bh_strategy(cfg, method, ctx.calibration, alpha=alpha),
        methods=[cfg.bh_pvalues], report_method=cfg.bh_pvalues, alpha=cfg.alpha, baselines=frontier,
        top_k=top_k, min_k=cfg.min_k, max_k=cfg.max_k or top_k, label=experiments.bh_label,
    )


def _verdicts(steps: dict, inputs) -> dict:
    """``derived["matched"]``: primary comparison and Holm-corrected grid, paired over evaluation documents."""
    return {"matched": derive.matched_verdicts(steps["matched"], steps["frontier"], documents=inputs.eval_documents)}


# "bh_default" (where registered) resolves bh_pvalues="auto" before this step reads it
NEEDS = tuple(n for n in ("calibration", "bh_default", "frontier") if n in STEPS)
register_step(Step("matched", _matched, needs=NEEDS, groups=("run", "eval")))
register_summary(Summary("matched", _verdicts, needs=("matched", "frontier")))
