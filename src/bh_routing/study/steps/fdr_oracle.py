"""Step ``fdr_oracle``: BH's false discoveries and power against the ablation oracle, for every
p-value method and α of the sweep, and the baselines at BH's mean k (:mod:`..oracle`)."""

from __future__ import annotations

from ...analysis import oracle
from ..registry import Context, Step, register_step


def _compute(ctx: Context):
    documents = getattr(ctx.inputs, "eval_documents", None)  # per-window document ids, when the split has them
    return oracle.fdr_oracle(ctx.model, ctx.inputs.eval_seqs, ctx.rs, ctx.calibration, documents=documents)


register_step(Step("fdr_oracle", _compute, needs=("calibration",), groups=("run",)))
