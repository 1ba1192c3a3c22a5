"""Figures of the premise step: difficulty.png, coactivation.png, specialization.png.

Each draws from the results dict only (``res["steps"]["premise"]``, written by
:func:`bh_routing.analysis.premise.premise_study`), never from a model.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .figures import COLORS, _model_line, _save  # noqa: E402

DIFFICULTY_NAMES = {"loss": "next-token loss (nats)", "entropy": "predictive entropy (nats)",
                    "router_entropy": "router entropy, mean over layers (nats)"}
MIN_EXPERT_PAIRS = 50  # per-expert specialisation drawn only for experts with this many routed pairs
SHORT = {"loss": "loss", "entropy": "pred. entropy", "router_entropy": "router entropy"}


def _colors(res: dict) -> dict[str, str]:
    bh = COLORS.get(f"bh-{res['config']['bh_pvalues']}", COLORS["bh-calibrated"])
    return {"topk": COLORS["topk"], "bh": bh, "bh_patched": bh, "topp": COLORS["topp"], "weight_ratio": COLORS["weight_ratio"]}


def _nan(xs) -> np.ndarray:
    return np.array([math.nan if x is None else x for x in xs], float)


def _band(ax, x, v: dict, color, label, *, marker="o", ls="-"):
    m, lo, hi = _nan(v["mean"]), _nan(v["ci_low"]), _nan(v["ci_high"])
    ax.plot(x, m, marker=marker, ls=ls, color=color, label=label, lw=1.8, ms=4)
    ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)


def difficulty(res: dict, path: Path) -> Path:
    """Experts per token by decile of difficulty, Spearman ρ with CIs, and where the loss goes."""
    p = res["steps"]["premise"]
    d, st, col = p["difficulty"], p["strategies"], _colors(res)
    k = p["model_top_k"]
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    for ax, name in ((axes[0, 0], "loss"), (axes[0, 1], "router_entropy")):
        dec = d["deciles"][name]
        x = _nan(dec["x_mean"])
        for s in ("bh", "topp", "weight_ratio"):
            _band(ax, x, dec["values"][s], col[s], f"{st[s]['label']} (mean k {st[s]['mean_k']:.2f})")
        ax.axhline(k, ls="--", color=col["topk"], lw=1, label=f"{st['topk']['label']}")
        ax.set_xlabel(f"{DIFFICULTY_NAMES[name]}, mean of each decile", fontsize=11)
        ax.set_ylabel("experts per token (mean over layers)\nmean over documents, 95% t-interval", fontsize=10.5)
        ax.set_title(f"Experts per token by decile of {SHORT[name]}", fontsize=12, fontweight="bold")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8.5, loc="best")
    # Spearman rho per strategy and difficulty
    ax = axes[1, 0]
    names = list(DIFFICULTY_NAMES)
    strategies = ["bh", "bh_patched", "topp", "weight_ratio"]
    width = 0.2
    for i, s in enumerate(strategies):
        rows = {r["difficulty"]: r for r in d["spearman"] if r["strategy"] == s}
        xs = np.arange(len(names)) + (i - 1.5) * width
        rho = _nan([rows[n]["mean"] for n in names])
        lo, hi = _nan([rows[n]["ci_low"] for n in names]), _nan([rows[n]["ci_high"] for n in names])
        err = np.where(np.isnan(lo), 0, [rho - lo, hi - rho])
        ax.bar(xs, rho, width, color=col[s], alpha=0.45 if s == "bh_patched" else 0.9, label=st[s]["label"],
               hatch="//" if s == "bh_patched" else None, edgecolor="white")
        ax.errorbar(xs, rho, yerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    rmin = d["rho_min"]
    ax.axhspan(-rmin, rmin, color="gray", alpha=0.12, label=f"|ρ| < {rmin:g} (negligible)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), [SHORT[n] for n in names], fontsize=11)
    ax.set_ylabel("within-document Spearman ρ(experts per token, difficulty)\nmean over documents, 95% t-interval",
                  fontsize=10.5)
    ax.set_title(f"Premise (primary: BH vs loss): {d['verdict'].upper()}", fontsize=12, fontweight="bold")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left")
    # where the loss goes
    ax = axes[1, 1]
    la = p["loss_attribution"]
    dec = la["deciles"]
    x = _nan(dec["x_mean"])
    _band(ax, x, dec["values"]["loss_increase"], col["bh"], "mean loss increase per decile (95% t-interval)")
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(la["mean_loss_increase"], ls=":", color="gray", lw=1, label=f"all tokens: {la['mean_loss_increase']:+.3f}")
    ax.set_xlabel(f"router mass dropped by BH vs {st['topk']['label']} (mean over layers), decile mean", fontsize=11)
    ax.set_ylabel("loss under BH − loss under top-k (nats)", fontsize=11)
    verdict = "concentrated" if la["concentrated"] else "not shown to concentrate"
    ax.set_title("Where the loss goes (BH routing the model)", fontsize=12, fontweight="bold")
    diff = la["difference"]
    ax.text(0.02, 0.80, f"top {round(100 * la['top_share'])}% of dropped mass vs the rest of a document: "
            f"{diff['mean']:+.3f} nats\n95% CI {diff['ci_low']:+.3f} to {diff['ci_high']:+.3f} ({diff['n']} documents)"
            f" → damage {verdict}", transform=ax.transAxes, fontsize=9.5, va="top",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "lightgray"})
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    unit = f"{d['documents']} documents, {d['tokens']} tokens"
    fig.suptitle(f"{_model_line(res)} · {unit}", fontsize=10, y=1.0)
    fig.tight_layout()
    return _save(fig, path)


def coactivation(res: dict, path: Path) -> Path:
    """P(j | i) heat maps under top-k and BH for the stored layers, summary in each title."""
    p = res["steps"]["premise"]
    co, st = p["coactivation"], p["strategies"]
    layers = [int(x) for x in co["matrix_layers"]]
    rules = co["rules"]
    fig, axes = plt.subplots(len(rules), len(layers), figsize=(4.6 * len(layers) + 1, 4.6 * len(rules)), squeeze=False)
    im = None
    for r, rule in enumerate(rules):
        rows = {row["layer"]: row for row in co["per_layer"][rule]}
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            m = np.array(co["matrices"][rule][str(layer)], float)
            m = np.ma.masked_less(m, 0)  # diagonal and never-chosen experts
            im = ax.imshow(m, cmap="magma_r", vmin=0, vmax=1, interpolation="nearest")
            row = rows[layer]
            ax.set_title(f"{st[rule]['label']} · layer {layer}\nmean max P(j|i) {row['mean_max_p']:.2f} "
                         f"(independent {row['independent']:.2f})", fontsize=10.5)
            ax.set_xlabel("expert j", fontsize=10)
            ax.set_ylabel("expert i", fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.8, label="P(j chosen | i chosen)")
    fig.suptitle(f"Expert co-activation (OLMoE §5) · {_model_line(res)}", fontsize=11, y=0.96)
    return _save(fig, path)


def specialization(res: dict, path: Path) -> Path:
    """Domain TV distance per layer (with noise floor) and vocabulary specialisation, top-k vs BH."""
    p = res["steps"]["premise"]
    dom, voc, st, col = p["domain_specialization"], p["vocabulary_specialization"], p["strategies"], _colors(res)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    ax = axes[0]
    if "skipped" in dom:
        ax.text(0.5, 0.5, f"Domain specialisation: {dom['skipped']}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
    else:
        for i, rule in enumerate(dom["rules"]):
            r = dom["per_rule"][rule]
            x = np.arange(len(r["tv_per_layer"])) + (i - 0.5) * 0.15
            tv, lo, hi = _nan(r["tv_per_layer"]), _nan(r["tv_per_layer_ci_low"]), _nan(r["tv_per_layer_ci_high"])
            ax.errorbar(x, tv, yerr=[tv - lo, hi - tv], marker="o", capsize=3, color=col[rule], label=f"{st[rule]['label']}")
            ax.axhline(r["floor_mean"], ls=":", color=col[rule], lw=1.2,
                       label=f"noise floor (halves of a domain), {st[rule]['label']}")
        ax.set_xticks(range(len(r["tv_per_layer"])))
        ax.set_xlabel("MoE layer", fontsize=11)
        ax.set_ylabel(f"TV distance, {' vs '.join(dom['domains'])} (95% jackknife CI over documents)", fontsize=11)
        ax.set_title("Domain specialisation: routed-pair shares", fontsize=12, fontweight="bold")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8.5)
    ax = axes[1]
    if "skipped" in voc:
        for a in axes[1:]:
            a.text(0.5, 0.5, f"Vocabulary specialisation: {voc['skipped']}", ha="center", va="center", wrap=True)
            a.set_axis_off()
    else:
        for i, rule in enumerate(voc["rules"]):
            rows = voc["per_rule"][rule]["per_layer"]
            x = np.array([r["layer"] for r in rows]) + (i - 0.5) * 0.15
            v = _nan([r["normalized"] for r in rows])
            lo, hi = _nan([r["normalized_ci"][0] for r in rows]), _nan([r["normalized_ci"][1] for r in rows])
            ax.errorbar(x, v, yerr=[v - lo, hi - v], marker="o", capsize=3, color=col[rule], label=st[rule]["label"])
        ax.set_xticks(range(len(rows)))
        ax.set_xlabel("MoE layer", fontsize=11)
        ax.set_ylabel("(S − S⁰) / (1 − S⁰)  (95% jackknife CI over documents)", fontsize=11)
        ax.set_title(f"Vocabulary specialisation above chance\n(token ids seen ≥ {voc['min_count']} times)",
                     fontsize=12, fontweight="bold")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        ax = axes[2]
        a, b = voc["rules"][:2]

        def excess(rule):
            spec, chance = _nan(np.ravel(voc["per_rule"][rule]["expert_spec"])), _nan(np.ravel(voc["per_rule"][rule]["expert_chance"]))
            return (spec - chance) / (1 - chance)

        pa, pb = (np.ravel(voc["per_rule"][r]["expert_pairs"]) for r in (a, b))
        enough = (pa >= MIN_EXPERT_PAIRS) & (pb >= MIN_EXPERT_PAIRS)
        xa, xb = excess(a)[enough], excess(b)[enough]
        ax.scatter(xa, xb, s=10, alpha=0.5, color=col[b])
        finite = np.isfinite(xa) & np.isfinite(xb)
        lim = [np.min([xa[finite], xb[finite]]) - 0.02, np.max([xa[finite], xb[finite]]) + 0.02] if finite.any() else [0, 1]
        ax.plot(lim, lim, color="black", lw=0.8, ls="--", label="equal")
        ax.set_xlabel(f"expert's specialisation above chance, {st[a]['label']}", fontsize=11)
        ax.set_ylabel(f"same expert, {st[b]['label']}", fontsize=11)
        ax.set_title(f"Per expert, every layer ({int(enough.sum())} experts with ≥ {MIN_EXPERT_PAIRS} pairs under both)",
                     fontsize=12, fontweight="bold")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(f"Specialisation (OLMoE §5) · {_model_line(res)}", fontsize=10, y=1.02)
    fig.tight_layout()
    return _save(fig, path)


FIGURES = {"difficulty.png": difficulty, "coactivation.png": coactivation, "specialization.png": specialization}
