"""Summaries computed from the saved step results (no model needed): tables, statistics, verdicts.

Every interval and test here is over **documents** (:mod:`bh_routing.analysis.stats`): a run's
per-sequence losses and expert counts are first reduced to one value per document with
:func:`~bh_routing.analysis.evaluate.per_document`. ``documents`` (each evaluation sequence's
document id) comes from the run's evaluation split; None treats every sequence as its own
document. Verdicts follow the one rule of :func:`bh_routing.analysis.stats.decide`.
"""

from __future__ import annotations

import math

import numpy as np

from .evaluate import document_loss, document_mean_k
from .mixing import mixed_to
from .stats import (
    CORRECTION,
    SIGNIFICANCE,
    adjust_family,
    load_balance,
    mean_ci,
    paired_comparison,
    perplexity_ci,
    t_interval,
)

#: A loss comparison "BH minus baseline" in the words of the frontier tables (lower loss is better).
VERDICT_WORDS = {"lower": "wins", "higher": "loses", "no significant difference": "ties", "too few documents": "no verdict"}
LOSS_METRIC = "loss per token (nats)"


def _share(hist: list[int], k: int) -> float:
    total = sum(hist)
    return hist[k] / total if total and k < len(hist) else 0.0


def reduction_pct(mean_k: float, top_k: int) -> float:
    """Expert reduction against the model's top-k, in percent: :math:`100\\,(1 - \\bar k / K)`."""
    return 100.0 * (1.0 - mean_k / top_k)


def ppl_ratio_ci(run: dict, ref: dict, *, documents: list[str] | None = None) -> dict:
    """Perplexity of ``run`` over that of ``ref`` on the same documents, with a paired t-interval.

    ratio = :math:`\\exp(\\overline{\\ell_{run} - \\ell_{ref}})` over per-document losses ℓ; the
    interval is exp of the t-interval of the mean difference (the between-document spread both
    runs share cancels). A ratio above 1 means ``run`` is worse than ``ref``.
    """
    d = document_loss(run, documents) - document_loss(ref, documents)
    ti = t_interval(d)
    return {"ppl_ratio": math.exp(ti["mean"]), "ratio_ci_low": math.exp(ti["ci_low"]), "ratio_ci_high": math.exp(ti["ci_high"])}


def sweep_table(
    runs: list[dict], *, top_k: int, max_k: int, min_k: int, ref: dict | None = None,
    documents: list[str] | None = None,
) -> list[dict]:
    """One row per run: mean ± sd experts, reduction vs top-k, saturation, perplexity with its
    t-interval over documents and (with ``ref``, the model's own top-k run) the paired perplexity
    ratio to it."""
    rows = []
    for r in runs:
        ppl = perplexity_ci(document_loss(r, documents))
        ratio = ppl_ratio_ci(r, ref, documents=documents) if ref is not None else {}
        rows.append(
            {
                "label": r["label"],
                "family": r["family"],
                "param": r["param"],
                "mean_k": r["mean_k"],
                "sd_k": r["sd_k"],
                "reduction_pct": reduction_pct(r["mean_k"], top_k),
                "share_at_max_k": _share(r["k_histogram"], max_k),
                "share_at_min_k": _share(r["k_histogram"], min_k),
                "compute_fraction": r["compute_fraction"],
                "ppl": ppl["ppl"],
                "ppl_ci_low": ppl["ci_low"],
                "ppl_ci_high": ppl["ci_high"],
                **ratio,
            }
        )
    return rows


def loss_comparison(run: dict, baseline: dict, *, documents: list[str] | None) -> dict:
    """Paired comparison of per-document loss, ``run`` minus ``baseline`` (raw p; a family adjusts later)."""
    c = paired_comparison(document_loss(run, documents), document_loss(baseline, documents),
                          names=(run["label"], baseline["label"]), metric=LOSS_METRIC)
    c["mean_k_a"], c["mean_k_b"] = float(run["mean_k"]), float(baseline["mean_k"])
    return c


def _word(c: dict) -> str:
    return VERDICT_WORDS[c["decision"]]


def matched_verdicts(matched: dict, baselines: list[dict], *, documents: list[str] | None,
                     pool: list[dict] | None = None) -> dict:
    """BH against baselines at matched mean k, paired over evaluation documents, the grid Holm-corrected;
    and each comparison again against the baseline mixed to the rule's evaluation mean k.

    ``matched`` is the result of :func:`bh_routing.analysis.matching.matched_runs`: for each target
    (a baseline run and its mean k on the calibration windows) the BH level found on the
    calibration windows and the BH run on the evaluation documents. ``baselines`` holds the
    baselines' evaluation runs (by label). A target that BH could not reach within the tolerance is
    *outside* (no test). The pre-registered primary comparison (``primary: true``) is tested alone at
    :data:`~bh_routing.analysis.stats.SIGNIFICANCE`; all other tested comparisons form one family whose
    p-values are Holm-adjusted (:func:`~bh_routing.analysis.stats.adjust_family`).

    **At the evaluation k** (:mod:`~bh_routing.analysis.mixing`, a sensitivity analysis): every
    tested row is compared again with the baseline's family randomised per document between its two
    runs that bracket the rule's evaluation mean k, whose expected mean k equals it exactly (exact
    per-document expectation, no random draw); ``pool`` holds the runs to mix from besides
    ``baselines`` (the α sweep, for rows whose baseline is BH; the matched BH runs are added). The
    primary's counterpart is read alone at 0.05 (a sensitivity comparison, not the pre-registered
    test); the grid's counterparts form a **second** Holm family. A row *outside* on calibration
    text is outside here too (same reason); a row whose evaluation k lies beyond the family's runs
    is outside here with that range.

    Returns ``{"primary": row or None, "grid": [rows], "correction", "family_size",
    "family_size_at_eval_k", "eval_k_gap", "tolerance"}``; each row holds the paired comparison
    (raw ``t_pvalue``, ``p_adjusted``, ``correction``, ``decision``, ``verdict``), the mean k of both
    runs on calibration and evaluation, ``word`` (wins / loses / ties / no verdict / outside), and
    ``comparison_at_eval_k``, ``at_eval_k`` (the two runs mixed and the share f of the higher one),
    ``word_at_eval_k``. ``eval_k_gap``: mean and largest |rule's - baseline's evaluation mean k| over the
    rows tested at the calibration-matched setting.
    """
    by_label = {b["label"]: b for b in baselines}
    runs = [t["run"] for t in matched["targets"] if t.get("run") is not None and t["family"].startswith("bh-")]
    mix_pool = list(baselines) + list(pool or []) + runs
    primary, grid = None, []
    for t in matched["targets"] + _against_bh(matched["targets"]):
        row = {
            "bh_family": t["family"], "baseline": t["baseline"], "baseline_family": t["baseline_family"],
            "target_k": t["target_k"], "alpha": t["param"], "calibration_k": t["calibration_k"], "matched": t["matched"],
            "primary": bool(t.get("primary")),
        }
        base = t.get("baseline_run") or by_label.get(t["baseline"])
        if not t["matched"] or t.get("run") is None or base is None:
            reason = t.get("reason") or "no evaluation run"
            row.update(word="outside", reason=reason, comparison=None, comparison_at_eval_k=None, at_eval_k=None,
                       word_at_eval_k="outside", reason_at_eval_k=reason)
        else:
            row["comparison"] = loss_comparison(t["run"], base, documents=documents)
            row["eval_k_bh"], row["eval_k_baseline"] = float(t["run"]["mean_k"]), float(base["mean_k"])
            mixed, info = mixed_to(mix_pool, base["family"], row["eval_k_bh"])
            row["at_eval_k"] = info if mixed is not None else None
            row["comparison_at_eval_k"] = None if mixed is None else loss_comparison(t["run"], mixed, documents=documents)
            if mixed is None:
                row.update(word_at_eval_k="outside", reason_at_eval_k=info["reason"])
        if row["primary"]:
            primary = row
        else:
            grid.append(row)
    tested = [r["comparison"] for r in grid if r["comparison"] is not None]
    adjust_family(tested)
    tested_eval = [r["comparison_at_eval_k"] for r in grid if r["comparison_at_eval_k"] is not None]
    adjust_family(tested_eval)
    for r in [primary, *grid]:
        if r is not None and r["comparison"] is not None:
            r["word"] = _word(r["comparison"])
        if r is not None and r["comparison_at_eval_k"] is not None:
            r["word_at_eval_k"] = _word(r["comparison_at_eval_k"])
    gaps = [abs(r["eval_k_bh"] - r["eval_k_baseline"]) for r in [primary, *grid] if r is not None and r["comparison"] is not None]
    return {"primary": primary, "grid": grid, "correction": CORRECTION, "family_size": len(tested),
            "family_size_at_eval_k": len(tested_eval),
            "eval_k_gap": {"mean": float(np.mean(gaps)), "max": float(np.max(gaps)), "n": len(gaps)} if gaps else None,
            "tolerance": matched.get("tolerance"), "significance": SIGNIFICANCE}


def _against_bh(targets: list[dict]) -> list[dict]:
    """Each other family's matched run against BH's matched run at the same top-k target (both met
    the target on calibration text): targets whose ``baseline`` is BH's run itself."""
    bh = {t["baseline"]: t for t in targets if t["family"].startswith("bh-") and t["baseline_family"] == "topk"
          and t.get("run") is not None}
    out = []
    for t in targets:
        if t["family"].startswith("bh-") or t["baseline_family"] != "topk" or t.get("run") is None or t["baseline"] not in bh:
            continue
        b = bh[t["baseline"]]
        out.append({**t, "baseline": b["run"]["label"], "baseline_family": b["family"], "baseline_run": b["run"]})
    return out


def frontier_verdicts(
    bh_runs: list[dict], baselines: list[dict], *, documents: list[str] | None = None, tol: float = 0.05
) -> list[dict]:
    """Each BH run against each baseline family at a **measured** point only (no interpolation).

    For runs that were not matched on calibration text (e.g. ``scripts/compare_nulls.py``): a BH run
    is compared with the family's run whose mean k lies within ``tol`` of its own, else *outside*;
    the tested comparisons are one Holm-adjusted family.
    """
    out = []
    for r in bh_runs:
        for fam in sorted({b["family"] for b in baselines}):
            near = [b for b in baselines if b["family"] == fam and abs(b["mean_k"] - r["mean_k"]) <= tol]
            row = {"bh": r["label"], "baseline": fam, "mean_k": r["mean_k"]}
            if not near:
                row.update(verdict="outside", comparison=None)
            else:
                b = min(near, key=lambda b: abs(b["mean_k"] - r["mean_k"]))
                row.update(comparison=loss_comparison(r, b, documents=documents), against=b["label"])
            out.append(row)
    adjust_family([r["comparison"] for r in out if r["comparison"] is not None])
    for row in out:
        if row["comparison"] is not None:
            c = row["comparison"]
            row.update(verdict=_word(c), mean_diff=c["mean_diff"], ci_low=c["ci_low"], ci_high=c["ci_high"])
        else:
            row.update(mean_diff=None, ci_low=None, ci_high=None)
    return out


def statistics(
    bh_run: dict, topk_run: dict, comparative_rows: list[dict], *, top_k: int, documents: list[str] | None = None
) -> dict:
    """BH at the report's α against the model's own top-k (unmatched k: what BH costs against the
    model as shipped), per document and per prompt, and the expert reduction with its t-interval.

    These are single descriptive comparisons (raw p, no correction); the matched, pre-registered
    comparison is in :func:`matched_verdicts`. Prompts are units too: ten prompts are fewer than
    :data:`~bh_routing.analysis.stats.MIN_DOCUMENTS`, so they get numbers, not a verdict.
    """
    names = (bh_run["label"], topk_run["label"])
    docs = loss_comparison(bh_run, topk_run, documents=documents)
    prompts = paired_comparison(
        np.array([r["bh_loss"] for r in comparative_rows]), np.array([r["topk_loss"] for r in comparative_rows]),
        names=names, metric=f"{LOSS_METRIC} over prompts", unit="prompts",
    )
    k_bh, k_tk = document_mean_k(bh_run, documents), document_mean_k(topk_run, documents)
    reduction = mean_ci(reduction_pct(k_bh, top_k))
    experts = paired_comparison(k_bh, k_tk, names=names, metric="experts per token")
    return {
        "documents": docs,
        "prompts": prompts,
        "experts": experts,
        "expert_reduction_pct": reduction,
        "ppl_bh": perplexity_ci(document_loss(bh_run, documents)),
        "ppl_topk": perplexity_ci(document_loss(topk_run, documents)),
    }


def utilization(topk_run: dict, bh_run: dict) -> dict:
    """Expert frequency (L, E) and load balance under top-k and BH."""
    return {
        name: {"label": r["label"], "expert_counts": r["expert_counts"], **load_balance(np.array(r["expert_counts"]))}
        for name, r in (("topk", topk_run), ("bh", bh_run))
    }


def temperature_monotone(runs: list[dict]) -> dict:
    """Per BH variant: mean k by temperature and whether it falls as the temperature rises.

    "decreasing" (every step down or equal, some strictly), "constant" (within 1e-9: a
    scale-free null) or "not monotone", measured on the evaluation sequences of the sweep.
    """
    out = {}
    for fam in sorted({r["family"] for r in runs}):
        pts = sorted((r["param"], r["mean_k"]) for r in runs if r["family"] == fam)
        steps = np.diff([k for _, k in pts])
        shape = "constant" if np.all(np.abs(steps) <= 1e-9) else "decreasing" if np.all(steps <= 1e-9) else "not monotone"
        out[fam] = {"temperatures": [t for t, _ in pts], "mean_k": [k for _, k in pts], "shape": shape}
    return out


def layers(runs: list[dict]) -> list[dict]:
    """Mean k per MoE layer for each run of the α sweep."""
    return [{"label": r["label"], "family": r["family"], "alpha": r["param"], "mean_k_per_layer": r["mean_k_per_layer"]} for r in runs]


def finite_or_none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
