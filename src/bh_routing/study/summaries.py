"""The derived summaries: entries of ``results["derived"]`` computed from finished steps only (no
model), registered here in the order their keys take in the results document.

:func:`~bh_routing.study.pipeline.assemble` calls each summary whose steps have finished; the steps
themselves are in :mod:`bh_routing.study.steps`.
"""

from __future__ import annotations

from ..analysis import derive
from ..analysis.certify import chosen_point
from .registry import Summary, register_summary, reported_variant


def _derived(steps: dict, inputs) -> dict:
    """Sweep tables, measured-point frontier verdicts of every swept variant, utilisation and BH-vs-top-k
    statistics, over evaluation documents (the matched-k verdicts are :func:`_verdicts`)."""
    cfg = inputs.cfg
    top_k = inputs.routing.top_k
    max_k = cfg.max_k or top_k
    kw = {"documents": inputs.eval_documents}
    derived: dict = {}
    alpha_runs = steps.get("alpha", [])
    frontier = steps.get("frontier", [])
    topk_run = next((r for r in frontier if r["family"] == "topk" and r["param"] == top_k), None)
    tkw = {**kw, "top_k": top_k, "max_k": max_k, "min_k": cfg.min_k, "ref": topk_run}
    variant = reported_variant(cfg, steps)
    bh_run = next((r for r in alpha_runs if r["family"] == f"bh-{variant}" and r["param"] == cfg.alpha), None)
    if alpha_runs:
        derived["alpha_sensitivity"] = derive.sweep_table(alpha_runs, **tkw)
        derived["layers"] = derive.layers(alpha_runs)
    if "temperature" in steps:
        derived["temperature_sensitivity"] = derive.sweep_table(steps["temperature"], **tkw)
        derived["temperature_monotone"] = derive.temperature_monotone(steps["temperature"])
    if "bh_default" in steps:
        derived["bh_variant"] = {k: v for k, v in steps["bh_default"].items() if k != "candidates"}
    if frontier:
        derived["frontier"] = derive.sweep_table(frontier, **tkw)
        if alpha_runs:
            derived["frontier_verdicts"] = derive.frontier_verdicts(alpha_runs, frontier, **kw)
    if topk_run and bh_run:
        derived["utilization"] = derive.utilization(topk_run, bh_run)
        if "comparative" in steps:
            derived["statistics"] = derive.statistics(bh_run, topk_run, steps["comparative"], top_k=top_k, **kw)
    return derived


def _certified(steps: dict, inputs) -> dict:
    """derived["certified"]: per family the certified experts per token (None: none certified),
    and the cheapest family; absent when the step was skipped (the figure needs it)."""
    cert = steps["certify"]
    if "skipped" in cert:
        return {}
    per_family = {f: (None if (p := chosen_point(cert, f)) is None else p["mean_k"]) for f in cert["families"]}
    return {"certified": {"epsilon": cert["epsilon"], "delta": cert["delta"], "risk": cert["risk"],
                          "mean_k": per_family, "best_family": cert["best_family"]}}


def _verdicts(steps: dict, inputs) -> dict:
    """``derived["matched"]``: primary comparison and Holm-corrected grid, paired over evaluation documents,
    each also against the baseline mixed to the rule's evaluation k (the α sweep's runs mix BH)."""
    return {"matched": derive.matched_verdicts(steps["matched"], steps["frontier"], documents=inputs.eval_documents,
                                               pool=steps.get("alpha", []))}


# the notebook's steps (:mod:`.steps.notebook`), the certify step, the matched step
register_summary(Summary("seed", _derived))
register_summary(Summary("certify", _certified, needs=("certify",)))
register_summary(Summary("matched", _verdicts, needs=("matched", "frontier")))
