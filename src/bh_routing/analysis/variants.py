"""Which BH variant a run reports: chosen by measurement on the calibration windows, never evaluation.

The single-setting analyses (baseline continuations, token level, prompt comparison, the BH vs
top-k statistics) need one BH variant (``RunConfig.bh_pvalues``: a p-value method and, with
"-router", router selection). With ``bh_pvalues="auto"`` it is chosen here: for each candidate
(the swept variants without "-wide") BH's level is searched, on the first :data:`WINDOWS`
calibration windows, so that its mean experts per token equals the target k = K / 2 rounded
(K the model's top-k; :class:`bh_routing.analysis.matching.AlphaSearch`, patch mode), and the
candidates' losses on those windows at that equal compute are compared. The lowest loss wins.

Caveat, stated in the results: the calibration windows are also the text the calibrated and
standardised nulls were fitted on, so those variants are judged in-sample here (their p-values
are valid by construction on it); the evaluation sequences stay untouched until the verdicts.
"""

from __future__ import annotations

import math

import numpy as np

from .evaluate import evaluate_strategy
from .settings import RoutingSettings, bh_label, parse_variant
from .matching import AlphaSearch

WINDOWS = 8  # calibration windows the choice is measured on
TOLERANCE = 0.05  # |mean k - target| accepted on those windows (experts per token)


def target_k(top_k: int, min_k: int) -> int:
    """The compute the candidates are compared at: half the model's top-k, inside (min_k, K)."""
    return int(min(max(math.floor(top_k / 2 + 0.5), min_k + 1), max(top_k - 1, min_k + 1)))


def choose_variant(model, calib_seqs, rs: RoutingSettings, calibration, *, top_k: int, configured: str | None) -> dict:
    """The reported variant, how it was chosen and every candidate's numbers (JSON-able).

    ``configured``: the variant the configuration names, or None to choose among ``rs.variants``."""
    candidates = [v for v in rs.variants if not parse_variant(v)[2]]
    if configured is not None:
        return {"chosen": configured, "how": "configured", "reason": "set in the configuration", "candidates": []}
    if len(candidates) == 1 or calib_seqs is None:
        why = "the only variant swept" if len(candidates) == 1 else "no calibration windows in this run: the first swept"
        return {"chosen": candidates[0], "how": "only", "reason": why, "candidates": []}
    seqs = calib_seqs[:WINDOWS]  # (M, S): calibration text only
    target = target_k(top_k, rs.min_k)
    rows = []
    for variant in candidates:
        def make(a, v=variant):
            return rs.bh(v, calibration, alpha=a)

        search = AlphaSearch(model, seqs, make, model_top_k=top_k, tol=TOLERANCE, max_passes=6)
        m = search.find(target)
        row = {"variant": variant, "alpha": m.param, "calibration_k": m.calibration_k, "matched": m.matched,
               "passes": search.passes, "reason": m.reason, "loss": None, "ppl": None}
        if m.matched:
            run = evaluate_strategy(model, seqs, make(m.param), label=bh_label(variant, m.param),
                                    family=f"bh-{variant}", param=m.param)
            row.update(loss=float(np.mean(run.seq_loss)), ppl=run.ppl, mean_k=run.mean_k,
                       window_loss=run.seq_loss.tolist())
        rows.append(row)
    matched = [r for r in rows if r["matched"]]
    if not matched:
        return {"chosen": candidates[0], "how": "unmatched", "target_k": target, "windows": len(seqs),
                "reason": f"no candidate reached mean k {target} on the calibration windows: the first swept",
                "candidates": rows}
    best = min(matched, key=lambda r: r["loss"])
    others = ", ".join(f"{r['variant']} {r['loss']:.4f}" for r in sorted(matched, key=lambda r: r["loss"]) if r is not best)
    reason = (
        f"lowest mean loss on {len(seqs)} calibration windows at equal compute (mean k {target} ± {TOLERANCE}): "
        f"{best['variant']} {best['loss']:.4f} nats/token (α = {best['alpha']:.3g})"
        + (f"; {others}" if others else "")
        + ". Calibration text only (the calibrated nulls were fitted on it); the evaluation sequences were not used."
    )
    return {"chosen": best["variant"], "how": "measured", "target_k": target, "windows": len(seqs),
            "tolerance": TOLERANCE, "reason": reason, "candidates": rows}
