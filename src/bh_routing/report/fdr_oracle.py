"""Figure ``fdr_oracle.png`` and the RESULTS.md section "What α bounds" (step ``fdr_oracle``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import fmt, plt, save_figure, table
from ..core.families import RANK_BASELINES
from .figures import COLORS, NAMES
from .registry import Figure, Section, register_figure, register_section

BASELINES = RANK_BASELINES
VARIANT_COLORS = {"standardized": "#8c564b", "calibrated-router": "#e377c2"}
VARIANT_NAMES = {"standardized": "BH, standardised null", "calibrated-router": "BH, calibrated null, router order"}


def _color(variant: str) -> str:
    return COLORS.get(f"bh-{variant}") or VARIANT_COLORS.get(variant, "#17becf")


def _name(variant: str) -> str:
    return NAMES.get(f"bh-{variant}") or VARIANT_NAMES.get(variant, f"BH, {variant}")


def _draw(res: dict, path: Path) -> Path:
    """FDP and power against α per p-value method, with FDP = α and the baselines at BH's mean k."""
    step = res["steps"]["fdr_oracle"]
    methods = list(dict.fromkeys(r["method"] for r in step["bh"]))
    fig, axes = plt.subplots(2, len(methods), figsize=(5.6 * len(methods), 9), squeeze=False)
    for col, method in enumerate(methods):
        rows = [r for r in step["bh"] if r["method"] == method]
        a = np.array([r["alpha"] for r in rows])
        color = _color(method)
        for row, key in ((0, "fdp"), (1, "power")):
            ax = axes[row, col]
            mean = np.array([r[key]["mean"] for r in rows])
            # a share is never below 0: the t-interval's lower end is drawn clipped there
            err = np.array([[r[key]["mean"] - max(r[key]["ci_low"], 0.0), r[key]["ci_high"] - r[key]["mean"]] for r in rows]).T
            label = "BH: share of its discoveries not needed" if key == "fdp" else "BH: needed experts selected"
            ax.errorbar(a, mean, yerr=np.clip(err, 0, None), marker="o", capsize=3, color=color, lw=2, label=label)
            if key == "fdp":
                ax.plot(a, [r["fdp_all"]["mean"] for r in rows], ls=":", marker=".", color=color,
                        label="BH: share of all selected (min_k's forced experts too)")
            for fam in BASELINES:
                pts = [(r["alpha"], r["baselines"][fam][key]["mean"]) for r in rows if r["baselines"].get(fam)]
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, ls="--", marker="s", ms=4, color=COLORS[fam], label=f"{NAMES[fam]} at BH's mean k")
            if key == "fdp":
                ax.plot([a.min(), a.max()], [a.min(), a.max()], color="black", lw=1, label="FDP = α")
                ax.set_yscale("symlog", linthresh=1e-3)
                ax.set_ylim(bottom=0)
                ax.set_ylabel(f"false discovery proportion (τ = {step['tau']:g}), 95% CI", fontsize=11)
                ax.set_title(f"{_name(method)}: FDP vs α", fontsize=12, fontweight="bold")
            else:
                ax.set_ylim(0, 1.02)
                ax.set_ylabel("power: needed experts selected / needed, 95% CI", fontsize=11)
                ax.set_title(f"{_name(method)}: power vs α", fontsize=12, fontweight="bold")
            ax.set_xscale("log")
            ax.set_xlabel("α (log scale)", fontsize=11)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    m = res["model"]
    fig.suptitle(
        f"{m['name']} · needed = removing the expert from the model's top-{step['top_k']} changes the MoE output by "
        f"more than τ = {step['tau']:g} (relative L2); experts outside the top-k are never needed · means over "
        f"{step['num_documents']} documents",
        fontsize=9, y=1.0,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def fdr_oracle_summary(step: dict) -> str:
    """One paragraph: for how many BH settings FDP is above / below α, and how BH compares with the
    baselines at its mean k (FDP of all selected; Holm-adjusted paired t-tests over documents)."""
    rows = step["bh"]
    count = {d: sum(r["fdp_vs_alpha"]["decision"] == d for r in rows)
             for d in ("higher", "lower", "no significant difference", "too few documents")}
    if count["too few documents"] == len(rows):
        return f"{len(rows)} BH settings measured; too few documents for a verdict (see the table)."
    text = (f"the false discovery proportion was significantly above α for {count['higher']} of {len(rows)} BH "
            f"settings, below α for {count['lower']}, and not distinguishable from α for "
            f"{count['no significant difference']}.")
    for fam in BASELINES:
        ds = [r["baselines"][fam]["fdp_diff"]["decision"] for r in rows if r["baselines"].get(fam)]
        if ds:
            text += (f" Against {fam} at the same mean k BH's selections were cleaner for {ds.count('lower')}, "
                     f"less clean for {ds.count('higher')} and not different for "
                     f"{ds.count('no significant difference')} of {len(ds)} settings.")
    return text


def tau_sentence(t: dict, tau: float) -> str:
    """Which τ the calibration windows would have chosen by the same criterion, beside the fixed τ."""
    cells = ", ".join(f"τ = {fmt(r['tau'])}: mean k {fmt(r['mean_k'])}, perplexity × {r['ppl_ratio']:.4f}"
                      for r in t["rows"])
    chosen = "no τ of the grid" if t["chosen"] is None else f"τ = {fmt(t['chosen'])}"
    same = "the same τ" if t["chosen"] == tau else f"not the fixed τ = {fmt(tau)}, whose results are shown"
    return (f"τ = {fmt(tau)} was chosen in edition 1 on evaluation documents. On {t['windows']} calibration windows the "
            f"same criterion (the largest τ whose oracle routing costs at most {fmt(100 * t['max_ppl_cost'])}% "
            f"perplexity against top-k) chooses {chosen}: {same} ({cells}).")


def _section(res: dict, figures: list[str]) -> list[str]:
    step = res["steps"]["fdr_oracle"]
    tau, k = step["tau"], step["top_k"]
    rows = []
    for r in step["bh"]:
        base = [r["baselines"].get(f) for f in BASELINES]
        rows.append([
            r["label"], r["mean_k"], f"{fmt(r['fdp']['mean'])} ({fmt(r['fdp']['ci_low'])}–{fmt(r['fdp']['ci_high'])})",
            r["fdp_all"]["mean"], f"{fmt(r['power']['mean'])} ({fmt(r['power']['ci_low'])}–{fmt(r['power']['ci_high'])})",
            *[("n/a" if b is None else f"{fmt(b['fdp']['mean'])} / {fmt(b['power']['mean'])}") for b in base],
        ])
    out = [
        "## What α bounds: false discoveries against an ablation oracle",
        "",
        f"An expert is *needed* by a token at a layer when removing it from the model's own top-{k} changes the MoE "
        f"block's output by more than τ = {fmt(tau)} in relative L2 (exact ablation; `docs/fdr_oracle.md` explains "
        "τ: dropping every expert under it at once costs under 1% perplexity). Experts outside the top-k are not "
        "needed by this definition. FDP = share of BH's own discoveries (not min_k's forced experts) that are not "
        "needed, per (token, layer), averaged per document; power = share of the needed experts selected. BH runs on "
        "the logits of the model's own routing (every layer as the model computes it). Baselines at BH's mean k "
        "(FDP of all their selections / power): the two settings of the family whose mean k bracket BH's (top-k: "
        "the integers around it) chosen at random per token in the proportions that give BH's mean k - the exact "
        "value of that runnable randomised rule, not a curve through measured points; 95% t-intervals over "
        "documents.",
        "",
        *([tau_sentence(step["tau_on_calibration"], tau), ""] if "tau_on_calibration" in step else []),
    ]
    if "fdr_oracle.png" in figures:
        out += ["![fdr_oracle](fdr_oracle.png)", ""]
    out += [
        table(["setting", "mean k", "FDP (95% CI)", "FDP, all selected", "power (95% CI)",
               *[f"{NAMES[f]} FDP / power" for f in BASELINES]], rows),
        "",
        "**Verdict** (paired t-tests over documents, Holm-adjusted within each family): " + fdr_oracle_summary(step),
        "",
        *[f"- {r['verdict']}" for r in step["bh"]],
        "",
    ]
    others = step.get("others", [])
    if others:
        out += [
            "Other families on the same recorded logits (no α to test: their FDP is the share of all their "
            "selections not needed; the comparisons with the baselines are in the same Holm family as BH's):",
            "",
            table(["setting", "mean k", "FDP (95% CI)", "power (95% CI)",
                   *[f"{NAMES[f]} FDP / power" for f in BASELINES]],
                  [[r["label"], r["mean_k"], f"{fmt(r['fdp']['mean'])} ({fmt(r['fdp']['ci_low'])}–{fmt(r['fdp']['ci_high'])})",
                    f"{fmt(r['power']['mean'])} ({fmt(r['power']['ci_low'])}–{fmt(r['power']['ci_high'])})",
                    *[("n/a" if (b := r["baselines"].get(f)) is None else f"{fmt(b['fdp']['mean'])} / {fmt(b['power']['mean'])}")
                      for f in BASELINES]] for r in others]),
            "",
            *[f"- {r['verdict']}" for r in others],
            "",
        ]
    nulls = step.get("null_rejection", {})
    if nulls:
        out += [
            "Null rejection rates P(p ≤ a | expert not in the model's top-k), mean over documents / nominal a "
            "(1 = what a valid p-value for \"not in the top-k\" gives), with the model routing as usual. Under BH "
            "routing the rates of layers ≥ 1 rise for the ordinary calibration; calibrating each layer under that "
            "routing (sequential calibration) is measured in `docs/fdr_oracle.md` (`python scripts/oracle_checks.py`).",
            "",
            table(["p-values", "layer", "a = 0.001", "a = 0.01", "a = 0.05"],
                  [[m, row["layer"], *[row[a]["ratio_to_nominal"] for a in ("0.001", "0.01", "0.05")]]
                   for m, rs in nulls.items() for row in rs]),
            "",
        ]
    return out


register_figure(Figure("fdr_oracle.png", _draw, needs=("fdr_oracle",)))
register_section(Section("fdr_oracle", _section, needs=("fdr_oracle",), order=85))
