"""The premise step: does BH give hard tokens more experts, and OLMoE's routing analyses under BH
(:func:`bh_routing.analysis.premise.premise_study`: two recorded forward passes over the
evaluation sequences, then statistics over documents). The adaptive families' settings are chosen
first, on the first calibration windows (:func:`~bh_routing.analysis.premise.choose_settings`)."""

from __future__ import annotations

from ...analysis.premise import CHOICE_WINDOWS, choose_settings, premise_study
from ..registry import Context, Step, register_step


def _premise(ctx: Context) -> dict:
    settings = choose_settings(ctx.model, ctx.inputs.calib_seqs[:CHOICE_WINDOWS], ctx.rs, ctx.calibration,
                               top_k=ctx.routing.top_k)  # calibration text only
    return premise_study(ctx.model, ctx.inputs.eval_seqs, ctx.rs, ctx.calibration, top_k=ctx.routing.top_k,
                         domains=ctx.inputs.eval_domains, documents=ctx.inputs.eval_documents, settings=settings)


register_step(Step("premise", _premise, needs=("calibration", "bh_default"), groups=("run",)))  # BH: the reported variant
