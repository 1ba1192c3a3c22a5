"""Matched-k comparisons (issue #12): BH at the α that uses as many experts as each baseline; the
verdicts, the pre-registered primary comparison (docs/preregistration.md) and the Holm-corrected grid
are the ``matched`` summary of :mod:`..summaries`."""

from __future__ import annotations

from ...analysis import knobs, matching
from ...analysis.settings import bh_label, setting_label
from ...core.families import RANK_BASELINES
from ..registry import STEPS, Context, Step, register_step


def _matched(ctx: Context):
    """The report's BH variant matched in mean k on the calibration windows to every top-k k and (with
    ``matched_baselines``) every adaptive baseline setting. Other swept variants are not matched (run time)."""
    cfg, rs, top_k = ctx.cfg, ctx.rs, ctx.routing.top_k
    frontier = ctx.results["frontier"]
    if not cfg.matched_baselines:  # top-k targets only
        frontier = [b for b in frontier if b["family"] == "topk"]
    out = matching.matched_runs(
        ctx.model, ctx.inputs.calib_seqs, ctx.inputs.eval_seqs,
        make_bh=lambda method, alpha: rs.bh(method, ctx.calibration, alpha=alpha),
        methods=[rs.variant], report_method=rs.variant, alpha=cfg.alpha, baselines=frontier,
        top_k=top_k, min_k=cfg.min_k, max_k=cfg.max_k or top_k, label=bh_label,
    )
    for fam in challengers(rs):  # other families matched to top-k by their own knob (bisection)
        res = knobs.matched_family_runs(
            ctx.model, ctx.inputs.calib_seqs, ctx.inputs.eval_seqs, family=fam,
            make=lambda v, f=fam: rs.strategy(f, v), values=rs.grid(fam, top_k=top_k), baselines=frontier,
            top_k=top_k, min_k=cfg.min_k, max_k=cfg.max_k or top_k, label=lambda v, f=fam: setting_label(f, v),
            tol=out["tolerance"], match_windows=out["match_windows"])
        out["targets"] += res["targets"]
        out["calibration_passes"] += res["passes"]
        out["evaluation_runs"] += res["evaluation_runs"]
    return out


def challengers(rs) -> list[str]:
    """The families matched to top-k by their own knob besides BH: every compared family that is not
    top-k, top-p or the weight ratio (those are BH's matched baselines): the entropy ladder and users' rules."""
    return [f for f in rs.families if f not in RANK_BASELINES]


# "bh_default" (where registered) resolves bh_pvalues="auto" before this step reads it
NEEDS = tuple(n for n in ("calibration", "bh_default", "frontier") if n in STEPS)
register_step(Step("matched", _matched, needs=NEEDS, groups=("run", "eval")))
