"""Which τ calibration text would choose: the criterion of ``scripts/oracle_checks.py``, on calibration windows.

The oracle's threshold :data:`~bh_routing.analysis.oracle.record.TAU` was chosen in edition 1 of the
held-out text on the *evaluation* documents (``scripts/oracle_checks.py``: the largest τ of
:data:`~bh_routing.analysis.oracle.record.TAUS` whose oracle routing - the model keeping only its
top-k experts whose ablation effect exceeds τ, in patch mode - costs at most 1 % perplexity against
the model's own top-k), and the ``fdr_oracle`` step reports FDP and power on those same documents.
τ is kept fixed (so results stay comparable across editions); this module applies the same
criterion to calibration windows, so that every run reports which τ calibration text alone would
have chosen beside the results at the fixed τ. Cost: one top-k pass and one oracle-routing pass
(about two forwards: :func:`~bh_routing.models.ablation.recording_ablation`) per τ of the grid, over
the first :data:`TAU_WINDOWS` calibration windows.
"""

from __future__ import annotations

import torch

from ...core import TopK
from ...models.ablation import recording_ablation
from ..evaluate import evaluate_strategy
from .record import TAUS, OracleRouting

#: Largest perplexity cost (a ratio minus 1) of routing by the oracle that still calls the dropped experts unneeded.
MAX_PPL_COST = 0.01
#: Calibration windows τ is chosen on (one window each of as many calibration documents).
TAU_WINDOWS = 16


@torch.no_grad()
def choose_tau(model, calib_seqs: torch.Tensor, *, top_k: int, taus=TAUS, max_ppl_cost: float = MAX_PPL_COST,
               min_k: int = 1) -> dict:
    """The largest τ in ``taus`` whose oracle routing of ``calib_seqs`` (N, S) costs at most
    ``max_ppl_cost`` perplexity against the model's top-k (pooled perplexity over the windows, as
    ``scripts/oracle_checks.py`` measures it); None when no τ passes.

    Returns ``{"chosen", "max_ppl_cost", "windows", "rows": [{"tau", "mean_k", "ppl_ratio", "passes"}]}``.
    """
    if not 0 < max_ppl_cost:
        raise ValueError(f"max_ppl_cost must be > 0, got {max_ppl_cost}")
    ref = evaluate_strategy(model, calib_seqs, TopK(top_k), label=f"TopK(k={top_k})", family="topk", param=top_k)
    rows, chosen = [], None
    for tau in sorted(float(t) for t in taus):
        with recording_ablation(model) as records:
            run = evaluate_strategy(model, calib_seqs, OracleRouting(records, tau, min_k=min_k), label=f"oracle({tau:g})",
                                    family="oracle", param=tau)
        ratio = run.ppl / ref.ppl
        ok = ratio - 1 <= max_ppl_cost
        chosen = tau if ok else chosen  # the largest τ that passes, as the script does
        rows.append({"tau": tau, "mean_k": run.mean_k, "ppl_ratio": ratio, "passes": ok})
    return {"chosen": chosen, "max_ppl_cost": max_ppl_cost, "windows": int(calib_seqs.shape[0]), "rows": rows}
