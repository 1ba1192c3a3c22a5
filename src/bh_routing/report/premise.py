"""The premise step in the report: difficulty.png, coactivation.png, specialization.png and a
RESULTS.md section per analysis, drawn from ``res["steps"]["premise"]`` only (written by
:func:`bh_routing.analysis.premise.premise_study`), never from a model.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .base import fmt, plt, save_figure, table
from .figures import COLORS, model_line
from .registry import Figure, Section, register_figure, register_section

DIFFICULTY_NAMES = {"loss": "next-token loss (nats)", "entropy": "predictive entropy (nats)",
                    "router_entropy": "router entropy, mean over layers (nats)"}
MIN_EXPERT_PAIRS = 50  # per-expert specialisation drawn only for experts with this many routed pairs
SHORT = {"loss": "loss", "entropy": "pred. entropy", "router_entropy": "router entropy"}


def _colors(res: dict) -> dict[str, str]:
    bh = COLORS.get(f"bh-{res['config']['bh_pvalues']}", COLORS["bh-calibrated"])
    return {"topk": COLORS["topk"], "bh": bh, "bh_patched": bh,
            **{f: COLORS[f] for f in adaptive(res["steps"]["premise"])}}


def adaptive(p: dict) -> list[str]:
    """The adaptive families the premise step compared with BH at its mean k (top-p, weight ratio, ...)."""
    return [f for f in p["strategies"] if f not in ("topk", "bh", "bh_patched")]


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
        for s in ("bh", *adaptive(p)):
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
    strategies = ["bh", "bh_patched", *adaptive(p)]
    width = 0.8 / len(strategies)
    for i, s in enumerate(strategies):
        rows = {r["difficulty"]: r for r in d["spearman"] if r["strategy"] == s}
        xs = np.arange(len(names)) + (i - (len(strategies) - 1) / 2) * width
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
    ax.axhline(la["mean_loss_increase"], ls=":", color="gray", lw=1, label=f"all tokens: {fmt(la['mean_loss_increase'], 3)}")
    ax.set_xlabel(f"router mass dropped by BH vs {st['topk']['label']} (mean over layers), decile mean", fontsize=11)
    ax.set_ylabel("loss under BH − loss under top-k (nats)", fontsize=11)
    verdict = "concentrated" if la["concentrated"] else "not shown to concentrate"
    ax.set_title("Where the loss goes (BH routing the model)", fontsize=12, fontweight="bold")
    diff = la["difference"]
    ax.text(0.02, 0.80, f"top {round(100 * la['top_share'])}% of dropped mass vs the rest of a document: "
            f"{fmt(diff['mean'], 3)} nats\n95% CI {fmt(diff['ci_low'], 3)} to {fmt(diff['ci_high'], 3)} ({diff['n']} documents)"
            f" → damage {verdict}", transform=ax.transAxes, fontsize=9.5, va="top",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "lightgray"})
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    unit = f"{d['documents']} documents, {d['tokens']} tokens"
    fig.suptitle(f"{model_line(res)} · {unit}", fontsize=10, y=1.0)
    fig.tight_layout()
    return save_figure(fig, path)


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
            ax.set_title(f"{st[rule]['label']} · layer {layer}\nmean max P(j|i) {fmt(row['mean_max_p'], 2)} "
                         f"(independent {fmt(row['independent'], 2)})", fontsize=10.5)
            ax.set_xlabel("expert j", fontsize=10)
            ax.set_ylabel("expert i", fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.8, label="P(j chosen | i chosen)")
    fig.suptitle(f"Expert co-activation (OLMoE §5) · {model_line(res)}", fontsize=11, y=0.96)
    return save_figure(fig, path)


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
            if r["floor_mean"] is not None:  # None: a domain with one evaluation document has no halves
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
            with np.errstate(invalid="ignore", divide="ignore"):  # experts never chosen: NaN, not drawn
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
    fig.suptitle(f"Specialisation (OLMoE §5) · {model_line(res)}", fontsize=10, y=1.02)
    fig.tight_layout()
    return save_figure(fig, path)

# ---------------------------------------------------------------------------- RESULTS.md sections
def _ci(r: dict, key: str = "mean") -> str:
    """'value (low to high)' of an interval row, or the value alone when there is no interval."""
    v, lo, hi = r.get(key), r.get("ci_low"), r.get("ci_high")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return fmt(v, 3)
    return f"{fmt(v, 3)} ({fmt(lo, 3)} to {fmt(hi, 3)})"


def _pair(v: float, ci: list) -> str:
    return _ci({"mean": v, "ci_low": ci[0], "ci_high": ci[1]})


def difficulty_section(res: dict, figures: list[str]) -> list[str]:
    p = res["steps"]["premise"]
    d, st = p["difficulty"], p["strategies"]
    rows = []
    for s in ("bh", "bh_patched", *adaptive(p)):
        by = {r["difficulty"]: r for r in d["spearman"] if r["strategy"] == s}
        rows.append([st[s]["label"], st[s]["mean_k"], st[s].get("calibration_k", "n/a"), *[_ci(by[n]) for n in DIFFICULTY_NAMES],
                     by["loss"]["pooled_rho"]])
    layer_rows = {}
    for r in d["per_layer"]:
        layer_rows.setdefault(r["layer"], [r["layer"]]).append(_ci(r))
    out = [
        "## Does BH give hard tokens more experts?", "",
        "Per token of the evaluation sequences: the experts each rule chooses (mean over MoE layers) against the "
        "unrouted model's difficulty at that position (next-token loss, predictive entropy, router entropy). "
        f"BH, top-p and weight ratio decide on the same router logits of one unrouted forward pass; top-p, "
        f"weight ratio and the other adaptive rules each at the nearest grid setting chosen on calibration text "
        f"(the grid value whose mean k is closest to BH's on {p.get('choice_windows', 'the first')} calibration "
        f"windows; not matched: their mean k on both texts is in the table). ρ is the within-document Spearman "
        f"correlation, mean over {d['documents']} documents with its 95% t-interval (pooled ρ over all "
        f"{d['tokens']} tokens beside it).", "",
        f"Rule, fixed in advance: {d['rule']}", "",
        f"**Verdict: {d['verdict']}.** {d['verdict_text']}", "",
    ]
    if "difficulty.png" in figures:
        out += ["![difficulty](difficulty.png)", ""]
    out += [table(["rule", "mean k (evaluation)", "mean k (calibration windows)", "ρ with loss", "ρ with predictive entropy", "ρ with router entropy", "pooled ρ with loss"], rows), ""]
    out += [f"Per layer, {st['bh']['label']}'s k against each difficulty (router entropy: the layer's own):", "",
            table(["layer", "ρ with loss", "ρ with predictive entropy", "ρ with router entropy"], list(layer_rows.values())), ""]
    out += [f"- {c['verdict']}" for c in d["comparisons"]]
    return out + [""]


def loss_section(res: dict, figures: list[str]) -> list[str]:
    p = res["steps"]["premise"]
    la, st = p["loss_attribution"], p["strategies"]
    return [
        "## Where the loss goes", "",
        f"Per token, with the model routing by {st['bh']['label']}: the router probability mass BH left out of the "
        f"model's top-{p['model_top_k']} "
        f"(mean over layers; mean {fmt(la['mean_mass_dropped'], 3)}) against the token's loss increase under BH "
        f"(mean {fmt(la['mean_loss_increase'], 3)} nats; mean loss {fmt(p['loss_bh'], 4)} under BH against "
        f"{fmt(p['loss_topk'], 4)} unrouted). Lower-right panel of difficulty.png.", "",
        f"**{'Concentrated' if la['concentrated'] else 'Not shown to be concentrated'}.** {la['sentence']}", "",
    ]


def coactivation_section(res: dict, figures: list[str]) -> list[str]:
    p = res["steps"]["premise"]
    co, st = p["coactivation"], p["strategies"]
    a, b = co["rules"][:2]
    by = {r: {row["layer"]: row for row in co["per_layer"][r]} for r in (a, b)}
    diffs = {x["layer"]: x for x in co.get("excess_difference", [])}
    rows = [[layer, _pair(by[a][layer]["mean_max_p"], by[a][layer]["mean_max_p_ci"]), by[a][layer]["independent"],
             _pair(by[b][layer]["mean_max_p"], by[b][layer]["mean_max_p_ci"]), by[b][layer]["independent"],
             _pair(diffs[layer]["diff"], diffs[layer]["ci"]) if layer in diffs else "n/a"]
            for layer in sorted(by[a])]
    out = [
        "## Expert co-activation", "",
        "P(j | i): the share of tokens routed to expert i that are also routed to expert j (OLMoE, Muennighoff et al. "
        "2024, §5), on the unrouted forward's router logits. Summary: the mean over experts of the largest P(j | i); "
        "fewer experts per token lower it by themselves, so it is shown next to its value for independent choice at "
        "the observed rates, and rules are compared by the excess over that (95% delete-one-document jackknife "
        "intervals).", "",
        f"**{co['sentence']}**" if "sentence" in co else "", "",
    ]
    if "coactivation.png" in figures:
        out += ["![coactivation](coactivation.png)", ""]
    out += [table(["layer", f"{st[a]['label']} mean max P(j|i)", "independent", f"{st[b]['label']} mean max P(j|i)",
                   "independent", "Δ excess (BH − top-k)"], rows), ""]
    return out


def specialization_section(res: dict, figures: list[str]) -> list[str]:
    p = res["steps"]["premise"]
    dom, voc, st = p["domain_specialization"], p["vocabulary_specialization"], p["strategies"]
    out = [
        "## Domain and vocabulary specialisation", "",
        "Domain: per layer, the total-variation distance between the domains' shares of routed (token, expert) pairs "
        "per expert (the embedded model card's measure for top-k), next to its noise floor (two halves of each "
        "domain). Vocabulary (OLMoE §5): for a routed pair (occurrence of token id x, expert e), the chance that "
        "another occurrence of x also went to e, against its value if routing ignored the token id, as "
        "(S − S⁰)/(1 − S⁰). 95% delete-one-document jackknife intervals.", "",
    ]
    if "specialization.png" in figures:
        out += ["![specialization](specialization.png)", ""]
    if "skipped" in dom:
        out += [f"Domain specialisation: {dom['skipped']}.", ""]
    else:
        a, b = dom["rules"][:2]
        ra, rb = dom["per_rule"][a], dom["per_rule"][b]
        rows = [[i, _ci({"mean": ra["tv_per_layer"][i], "ci_low": ra["tv_per_layer_ci_low"][i], "ci_high": ra["tv_per_layer_ci_high"][i]}),
                 _ci({"mean": rb["tv_per_layer"][i], "ci_low": rb["tv_per_layer_ci_low"][i], "ci_high": rb["tv_per_layer_ci_high"][i]})]
                for i in range(len(ra["tv_per_layer"]))]
        rows.append(["noise floor (mean)", _pair(ra["floor_mean"], ra["floor_mean_ci"]), _pair(rb["floor_mean"], rb["floor_mean_ci"])])
        out += [f"**{dom['sentence']}**", "", table(["layer", f"TV, {st[a]['label']}", f"TV, {st[b]['label']}"], rows), ""]
    if "skipped" in voc:
        out += [f"Vocabulary specialisation: {voc['skipped']}.", ""]
    else:
        a, b = voc["rules"][:2]
        la, lb = voc["per_rule"][a]["per_layer"], voc["per_rule"][b]["per_layer"]
        diffs = {x["layer"]: x for x in voc.get("difference", [])}
        rows = [[x["layer"], _pair(x["normalized"], x["normalized_ci"]), _pair(y["normalized"], y["normalized_ci"]),
                 _pair(diffs[x["layer"]]["diff"], diffs[x["layer"]]["ci"]) if x["layer"] in diffs else "n/a"]
                for x, y in zip(la, lb)]
        out += [f"**{voc['sentence']}**" if "sentence" in voc else "",
                f"({voc['token_ids']} token ids seen at least {voc['min_count']} times, {voc['tokens']} tokens.)", "",
                table(["layer", f"(S − S⁰)/(1 − S⁰), {st[a]['label']}", f"{st[b]['label']}", "difference (BH − top-k)"], rows), ""]
    return out


NEEDS = ("premise",)
PREMISE_FIGURES = ("difficulty.png", "coactivation.png", "specialization.png")
for _figure in (Figure("difficulty.png", difficulty, NEEDS), Figure("coactivation.png", coactivation, NEEDS),
                Figure("specialization.png", specialization, NEEDS)):
    register_figure(_figure)
for _section in (Section("premise_difficulty", difficulty_section, NEEDS, 91), Section("premise_loss", loss_section, NEEDS, 92),
                 Section("premise_coactivation", coactivation_section, NEEDS, 93),
                 Section("premise_specialization", specialization_section, NEEDS, 94)):
    register_section(_section)
