"""The RESULTS.md sections of the original notebook's analyses, registered in report order."""

from __future__ import annotations

from .base import cell, fmt, table
from .evidence import grid_counts, primary_sentence
from .registry import Section, register_section


def summary(res: dict, figures: list[str]) -> list[str]:
    d, k = res["derived"], res["model"]["top_k"]
    st = d["statistics"]
    red = st["expert_reduction_pct"]
    out = [
        "## Summary",
        "",
        f"- BH ({st['documents']['a']}) used **{fmt(st['experts']['mean_a'])}** experts per token against "
        f"{k} for top-{k}: a reduction of **{fmt(red['mean'])}%** (95% CI {fmt(red['ci_low'])} to {fmt(red['ci_high'])}).",
        f"- Held-out perplexity: BH {fmt(st['ppl_bh']['ppl'])} (95% CI {fmt(st['ppl_bh']['ci_low'])}–{fmt(st['ppl_bh']['ci_high'])}), "
        f"top-{k} {fmt(st['ppl_topk']['ppl'])} ({fmt(st['ppl_topk']['ci_low'])}–{fmt(st['ppl_topk']['ci_high'])}).",
        f"- Against top-{k} itself (BH uses fewer experts, so this is the price of the saving, not a matched "
        f"comparison): {st['documents']['verdict']}",
    ]
    if "matched" in d:
        out += [f"- {primary_sentence(d['matched'])}", *grid_counts(d["matched"])]
    out.append("")
    return out


def pareto(res: dict, figures: list[str]) -> list[str]:
    if "pareto_frontier.png" not in figures:
        return []
    d = res["derived"]
    out = [
        "## Pareto frontier: quality vs experts",
        "",
        "Each point is one routing setting: mean active experts per token (x) against held-out perplexity "
        "(y), exp of the mean per-document loss with its 95% t-interval over evaluation documents. Lower-left is "
        "better. Points of different families are not compared along lines between them: the verdicts come "
        "from runs matched in mean k (section *Matched comparisons*).",
        "",
        "![pareto](pareto_frontier.png)",
        "",
        table(
            ["setting", "mean k", "perplexity", "95% CI"],
            [[r["label"], r["mean_k"], r["ppl"], f"{fmt(r['ppl_ci_low'])}–{fmt(r['ppl_ci_high'])}"]
             for r in sorted(d["frontier"] + d["alpha_sensitivity"], key=lambda r: (r["family"], r["mean_k"]))],
        ),
        "",
    ]
    k = res["model"]["top_k"]
    for r in (r for r in d["frontier"] if ":" in r["family"]):  # a family's published setting (its references)
        ratio = (f"; perplexity {fmt(r['ppl_ratio'])} × top-{k}'s (paired 95% CI {fmt(r['ratio_ci_low'])} to "
                 f"{fmt(r['ratio_ci_high'])})" if r.get("ppl_ratio") is not None else "")
        out += [f"Published setting **{r['label']}** (star marker): mean k {fmt(r['mean_k'])}, "
                f"{fmt(r['reduction_pct'])}% fewer experts than top-{k}; perplexity {fmt(r['ppl'])} (95% CI "
                f"{fmt(r['ppl_ci_low'])} to {fmt(r['ppl_ci_high'])}){ratio}. One setting, not matched: how it "
                "compares at equal k is in *Matched comparisons*.", ""]
    return out


def baseline(res: dict, figures: list[str]) -> list[str]:
    k = res["model"]["top_k"]
    return ["## 1. Baseline inference (greedy, patch mode)", "", table(
        ["prompt", f"top-{k} continuation", "experts/token", "BH continuation", "experts/token"],
        [[f"{r['prompt_label']}: {cell(r['prompt'])}", cell(r["TopK"]["continuation"]), r["TopK"]["mean_experts_per_token"],
          cell(r["BH"]["continuation"]), r["BH"]["mean_experts_per_token"]] for r in res["steps"]["baseline"]],
    ), ""]


def alpha(res: dict, figures: list[str]) -> list[str]:
    k, steps = res["model"]["top_k"], res["steps"]
    out = ["## 2. α sensitivity", "", "![alpha](alpha_sensitivity.png)", ""]
    out.append(table(
        ["method", "α", "mean k", "sd", f"reduction vs top-{k} (%)", "share at max_k", "share at min_k", "perplexity"],
        [[r["family"], r["param"], r["mean_k"], r["sd_k"], r["reduction_pct"], r["share_at_max_k"], r["share_at_min_k"], r["ppl"]]
         for r in res["derived"]["alpha_sensitivity"]],
    ))
    if "calibration" in steps:
        c = steps["calibration"]
        out += ["", f"Calibrated null: at most {c['reservoir_size']} values per (layer, expert), fewest {c['min_null_count']}. "
                f"The smallest conformal p-value is 1/(n+1) = {fmt(1 / (c['min_null_count'] + 1))}; BH's first threshold α/E "
                f"is below it when α < E/(n+1) = {fmt(res['model']['num_experts'] / (c['min_null_count'] + 1))}, so at such α "
                "one outstanding expert is never enough: BH selects beyond min_k only where several experts are extreme together."]
    out.append("")
    return out


def temperature(res: dict, figures: list[str]) -> list[str]:
    return ["## 3. Temperature sensitivity", "",
            "Temperature T spreads each token's logits about their median by 1/T (the usual softmax temperature). "
            "With the empirical and standardized nulls the p-values are scale-free, so T changes nothing (tested in "
            "tests/core; they are not swept here); with the calibrated null "
            "T < 1 gives more experts and T > 1 mostly fewer (not necessarily monotone: below-median logits move up). "
            "Weights always come from the untempered softmax.", "",
            "![temperature](temperature_sensitivity.png)", "",
            table(["method", "T", "mean k", "sd", "perplexity"],
                  [[r["family"], r["param"], r["mean_k"], r["sd_k"], r["ppl"]] for r in res["derived"]["temperature_sensitivity"]]),
            ""]


def token_level(res: dict, figures: list[str]) -> list[str]:
    tl = res["steps"]["token_level"]
    return ["## 4. Token-level analysis", "", f"Sentence: `{tl['sentence']}`", "", "![tokens](token_level_analysis.png)", "",
            table(["token kind", "tokens", "mean experts"], [[kd, v["n"], v["mean"]] for kd, v in tl["mean_k_by_kind"].items()]),
            ""]


def comparative(res: dict, figures: list[str]) -> list[str]:
    k = res["model"]["top_k"]
    return ["## 5. Comparative analysis (per prompt)", "", "![comparative](comparative_analysis.png)", "", table(
        ["prompt", "tokens", f"top-{k} experts", "BH experts", "reduction (%)", f"top-{k} loss", "BH loss", "Δ loss"],
        [[r["prompt_label"], r["tokens"], r["topk_mean_experts"], r["bh_mean_experts"], r["expert_reduction_pct"],
          r["topk_loss"], r["bh_loss"], r["loss_change"]] for r in res["steps"]["comparative"]],
    ), ""]


def utilization(res: dict, figures: list[str]) -> list[str]:
    u = res["derived"]["utilization"]
    return ["## 6. Expert utilisation", "", "![utilisation](expert_utilization_heatmap.png)", "",
            table(["routing", "mean CV of expert load", "mean normalised entropy"],
                  [[u[n]["label"], u[n]["mean_cv"], u[n]["mean_normalized_entropy"]] for n in ("topk", "bh")]),
            ""]


def layers(res: dict, figures: list[str]) -> list[str]:
    rows = res["derived"]["layers"]
    nl = len(rows[0]["mean_k_per_layer"])
    return ["## 7. Layer-wise analysis", "", "![layers](layer_analysis.png)", "",
            table(["setting"] + [f"layer {i}" for i in range(nl)], [[r["label"]] + r["mean_k_per_layer"] for r in rows]),
            ""]


def statistics(res: dict, figures: list[str]) -> list[str]:
    st = res["derived"]["statistics"]
    rows = []
    for key in ("documents", "prompts", "experts"):
        s = st[key]
        rows.append([s["metric"], f"{s['n']} {s['unit']}", s["mean_a"], s["mean_b"], s["mean_diff"],
                     f"{fmt(s['ci_low'])} to {fmt(s['ci_high'])}", s["t_pvalue"], s["wilcoxon_pvalue"], s["cohens_dz"], s["decision"]])
    return ["## 8. Statistics: BH vs top-k", "",
            "BH at the report's α against the model's own top-k (not matched in k). Paired over evaluation documents "
            "(prompts for the prompt row); 95% t-intervals; the verdict is the paired t-test at 0.05, and none is given "
            "below 20 units. Wilcoxon p is a robustness check, never the verdict.", "",
            "![statistics](statistical_analysis.png)", "",
            table(["metric", "n", "BH", "top-k", "mean diff", "95% CI", "paired t p", "Wilcoxon p", "Cohen's d_z", "verdict"], rows),
            "", *[f"- {st[k]['verdict']}" for k in ("documents", "prompts", "experts")], ""]


for _section in (
    Section("summary", summary, ("statistics",), 10),
    Section("pareto", pareto, ("frontier", "alpha_sensitivity"), 15),
    Section("baseline", baseline, ("baseline",), 20),
    Section("alpha", alpha, ("alpha_sensitivity",), 30),
    Section("temperature", temperature, ("temperature_sensitivity",), 40),
    Section("token_level", token_level, ("token_level",), 50),
    Section("comparative", comparative, ("comparative",), 60),
    Section("utilization", utilization, ("utilization",), 70),
    Section("layers", layers, ("layers",), 80),
    Section("statistics", statistics, ("statistics",), 90),
):
    register_section(_section)
