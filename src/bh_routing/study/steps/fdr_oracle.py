"""Step ``fdr_oracle``: BH's false discoveries and power against the ablation oracle, for every
p-value method and α of the sweep, and the baselines at BH's mean k (:mod:`..oracle`), at the fixed
τ; beside them the τ that the same criterion picks on calibration windows
(:func:`~bh_routing.analysis.oracle.tau.choose_tau`)."""

from __future__ import annotations

from ...analysis import oracle
from ...analysis.oracle.tau import TAU_WINDOWS, choose_tau
from ..registry import Context, Step, register_step


def _compute(ctx: Context):
    documents = getattr(ctx.inputs, "eval_documents", None)  # per-window document ids, when the split has them
    tau = choose_tau(ctx.model, ctx.inputs.calib_seqs[:TAU_WINDOWS], top_k=ctx.routing.top_k, min_k=ctx.cfg.min_k)
    out = oracle.fdr_oracle(ctx.model, ctx.inputs.eval_seqs, ctx.rs, ctx.calibration, documents=documents)
    return {**out, "tau_on_calibration": tau}


register_step(Step("fdr_oracle", _compute, needs=("calibration",), groups=("run",)))
