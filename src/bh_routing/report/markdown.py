"""RESULTS.md, written from a results dict only: every number is the run's own."""

from __future__ import annotations


def fmt(x, digits: int = 4) -> str:
    """How every number appears in the report (tests parse the same format)."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "⏎")


def _verdict_summary(verdicts: list[dict]) -> list[str]:
    lines = []
    for fam in sorted({v["baseline"] for v in verdicts}):
        vs = [v for v in verdicts if v["baseline"] == fam]
        counts = {w: sum(v["verdict"] == w for v in vs) for w in ("wins", "ties", "loses", "outside")}
        lines.append(
            f"- against **{fam}** at equal mean k: BH wins {counts['wins']}, ties {counts['ties']}, "
            f"loses {counts['loses']} of {len(vs)} BH settings ({counts['outside']} outside the baseline's range of k)."
        )
    return lines


def render(res: dict, figures: list[str]) -> str:
    cfg, model, env, d, steps = res["config"], res["model"], res["environment"], res["derived"], res["steps"]
    k = model["top_k"]
    out = [
        "# BH routing: results",
        "",
        f"Model **{model['name']}** ({model['model_class']}, {model['num_moe_layers']} MoE layers × "
        f"{model['num_experts']} experts, top-{k}, norm_topk_prob={model['norm_topk_prob']}; "
        f"{fmt(model['total_params'] / 1e6)} M parameters, {fmt(model['active_params'] / 1e6)} M active per token), "
        f"{model['dtype']} on {model['device']}, experts backend `{model['experts_implementation']}`.",
        (f"Evaluation: {cfg['eval_sequences']} held-out sequences × {cfg['seq_len']} tokens "
         f"({', '.join(sorted(set(res['eval_domains'])))}); calibration on {cfg['calib_sequences']} other sequences. "
         if res["eval_domains"] else "")
        + f"Seed {cfg['seed']}{', quick run' if cfg.get('quick') else ''}. "
        f"torch {env['torch']}, transformers {env['transformers']}, bh-routing {env['bh_routing']}.",
        "",
        "Every number below was computed by this run; `bh_routing_results.json` holds them all with the configuration.",
        "",
    ]
    st = d.get("statistics")
    if st:
        red = st["expert_reduction_pct"]
        out += [
            "## Summary",
            "",
            f"- BH ({st['sequences']['a']}) used **{fmt(st['experts']['mean_a'])}** experts per token against "
            f"{k} for top-{k}: a reduction of **{fmt(red['mean'])}%** (95% CI {fmt(red['ci_low'])} to {fmt(red['ci_high'])}).",
            f"- Held-out perplexity: BH {fmt(st['ppl_bh']['ppl'])} (95% CI {fmt(st['ppl_bh']['ci_low'])}–{fmt(st['ppl_bh']['ci_high'])}), "
            f"top-{k} {fmt(st['ppl_topk']['ppl'])} ({fmt(st['ppl_topk']['ci_low'])}–{fmt(st['ppl_topk']['ci_high'])}).",
            f"- {st['sequences']['verdict']}",
        ]
        if "frontier_verdicts" in d:
            out += _verdict_summary(d["frontier_verdicts"])
        out.append("")
    if "pareto_frontier.png" in figures:
        out += [
            "## Pareto frontier: quality vs experts",
            "",
            "Each point is one routing setting: mean active experts per token (x) against held-out perplexity "
            "with a 95% bootstrap CI over sequences (y). Lower-left is better. A BH setting *wins* against a "
            "baseline family when its per-sequence loss is lower than the baseline's, interpolated linearly to the "
            "same mean k, with the 95% paired bootstrap CI of the difference below 0; *loses* when above; *ties* otherwise.",
            "",
            "![pareto](pareto_frontier.png)",
            "",
            _table(
                ["setting", "mean k", "perplexity", "95% CI"],
                [[r["label"], r["mean_k"], r["ppl"], f"{fmt(r['ppl_ci_low'])}–{fmt(r['ppl_ci_high'])}"]
                 for r in sorted(d["frontier"] + d["alpha_sensitivity"], key=lambda r: (r["family"], r["mean_k"]))],
            ),
            "",
        ]
        if "frontier_verdicts" in d:
            out += [
                _table(
                    ["BH setting", "mean k", "vs", "Δ loss (nats/token)", "95% CI", "verdict"],
                    [[v["bh"], v["mean_k"], v["baseline"], v["mean_diff"],
                      "n/a" if v["ci_low"] is None else f"{fmt(v['ci_low'])} to {fmt(v['ci_high'])}", v["verdict"]]
                     for v in d["frontier_verdicts"]],
                ),
                "",
            ]
    if "baseline" in steps:
        out += ["## 1. Baseline inference (greedy, patch mode)", ""]
        out.append(_table(
            ["prompt", f"top-{k} continuation", "experts/token", "BH continuation", "experts/token"],
            [[f"{r['prompt_label']}: {_cell(r['prompt'])}", _cell(r["TopK"]["continuation"]), r["TopK"]["mean_experts_per_token"],
              _cell(r["BH"]["continuation"]), r["BH"]["mean_experts_per_token"]] for r in steps["baseline"]],
        ))
        out.append("")
    if "alpha_sensitivity" in d:
        out += ["## 2. α sensitivity", "", "![alpha](alpha_sensitivity.png)", ""]
        out.append(_table(
            ["method", "α", "mean k", "sd", f"reduction vs top-{k} (%)", "share at max_k", "share at min_k", "perplexity"],
            [[r["family"], r["param"], r["mean_k"], r["sd_k"], r["reduction_pct"], r["share_at_max_k"], r["share_at_min_k"], r["ppl"]]
             for r in d["alpha_sensitivity"]],
        ))
        if "calibration" in steps:
            c = steps["calibration"]
            out += ["", f"Calibrated null: at most {c['reservoir_size']} values per (layer, expert), fewest {c['min_null_count']}. "
                    f"The smallest conformal p-value is 1/(n+1) = {fmt(1 / (c['min_null_count'] + 1))}; BH's first threshold α/E "
                    f"is below it when α < E/(n+1) = {fmt(model['num_experts'] / (c['min_null_count'] + 1))}, so at such α "
                    "one outstanding expert is never enough: BH selects beyond min_k only where several experts are extreme together."]
        out.append("")
    if "temperature_sensitivity" in d:
        out += ["## 3. Temperature sensitivity", "",
                "Temperature T spreads each token's logits about their median by 1/T (the usual softmax temperature). "
                "With the empirical null the p-values are scale-free, so T changes nothing; with the calibrated null "
                "T < 1 gives more experts and T > 1 mostly fewer (not necessarily monotone: below-median logits move up). "
                "Weights always come from the untempered softmax.", "",
                "![temperature](temperature_sensitivity.png)", ""]
        out.append(_table(["method", "T", "mean k", "sd", "perplexity"],
                          [[r["family"], r["param"], r["mean_k"], r["sd_k"], r["ppl"]] for r in d["temperature_sensitivity"]]))
        out.append("")
    if "token_level" in steps:
        tl = steps["token_level"]
        out += ["## 4. Token-level analysis", "", f"Sentence: `{tl['sentence']}`", "", "![tokens](token_level_analysis.png)", ""]
        out.append(_table(["token kind", "tokens", "mean experts"], [[kd, v["n"], v["mean"]] for kd, v in tl["mean_k_by_kind"].items()]))
        out.append("")
    if "comparative" in steps:
        out += ["## 5. Comparative analysis (per prompt)", "", "![comparative](comparative_analysis.png)", ""]
        out.append(_table(
            ["prompt", "tokens", f"top-{k} experts", "BH experts", "reduction (%)", f"top-{k} loss", "BH loss", "Δ loss"],
            [[r["prompt_label"], r["tokens"], r["topk_mean_experts"], r["bh_mean_experts"], r["expert_reduction_pct"],
              r["topk_loss"], r["bh_loss"], r["loss_change"]] for r in steps["comparative"]],
        ))
        out.append("")
    if "utilization" in d:
        u = d["utilization"]
        out += ["## 6. Expert utilisation", "", "![utilisation](expert_utilization_heatmap.png)", ""]
        out.append(_table(["routing", "mean CV of expert load", "mean normalised entropy"],
                          [[u[n]["label"], u[n]["mean_cv"], u[n]["mean_normalized_entropy"]] for n in ("topk", "bh")]))
        out.append("")
    if "layers" in d:
        out += ["## 7. Layer-wise analysis", "", "![layers](layer_analysis.png)", ""]
        nl = len(d["layers"][0]["mean_k_per_layer"])
        out.append(_table(["setting"] + [f"layer {i}" for i in range(nl)],
                          [[r["label"]] + r["mean_k_per_layer"] for r in d["layers"]]))
        out.append("")
    if st:
        out += ["## 8. Statistics: BH vs top-k", "", "![statistics](statistical_analysis.png)", ""]
        rows = []
        for key in ("sequences", "prompts", "experts"):
            s = st[key]
            rows.append([s["metric"], s["n"], s["mean_a"], s["mean_b"], s["mean_diff"],
                         f"{fmt(s['ci_low'])} to {fmt(s['ci_high'])}", s["t_pvalue"], s["wilcoxon_pvalue"], s["cohens_dz"], s["significant"]])
        out.append(_table(["metric", "n", "BH", "top-k", "mean diff", "95% CI", "paired t p", "Wilcoxon p", "Cohen's d_z", "significant (0.05)"], rows))
        out += ["", *[f"- {st[k]['verdict']}" for k in ("sequences", "prompts", "experts")], ""]
    if "downstream" in steps:
        from .downstream import markdown as downstream_markdown

        out += [downstream_markdown(res), ""]
    out += ["## Reproduce", "", "The configuration of this run is under `config` in `bh_routing_results.json`; "
            "the same seed gives the same numbers:", "", "```bash",
            "bh-routing run --config bh_routing_results.json --out <another folder>", "```", ""]
    return "\n".join(out)


def conclusions(res: dict) -> str:
    """The conclusions of a run in Markdown, written from its own numbers (the notebook's last cell).

    Uses the same numbers as RESULTS.md's summary (``res["derived"]``, ``res["steps"]``); a part
    whose data the run does not hold is left out. Only the caveats and next steps are fixed text.
    """
    cfg, model, d, steps = res["config"], res["model"], res["derived"], res["steps"]
    k = model["top_k"]
    method = cfg["bh_pvalues"]
    run = (
        f"{model['name']} ({model['num_moe_layers']} MoE layers × {model['num_experts']} experts, top-{k}), "
        f"{cfg['eval_sequences']} held-out sequences × {cfg['seq_len']} tokens, seed {cfg['seed']}"
        + (", quick run" if cfg["quick"] else "")
    )
    out = ["## Conclusions", "", f"Generated from this run's results: {run}.", ""]
    found: list[str] = []
    st = d.get("statistics")
    if st:
        red = st["expert_reduction_pct"]
        found += [
            f"- **Experts.** BH ({st['sequences']['a']}) used {fmt(st['experts']['mean_a'])} experts per token "
            f"against {k} for top-{k}: a reduction of {fmt(red['mean'])}% (95% CI {fmt(red['ci_low'])} to "
            f"{fmt(red['ci_high'])}).",
            f"- **Quality.** Held-out perplexity {fmt(st['ppl_bh']['ppl'])} with BH (95% CI "
            f"{fmt(st['ppl_bh']['ci_low'])}–{fmt(st['ppl_bh']['ci_high'])}) against {fmt(st['ppl_topk']['ppl'])} with "
            f"top-{k} ({fmt(st['ppl_topk']['ci_low'])}–{fmt(st['ppl_topk']['ci_high'])}). {st['sequences']['verdict']}",
            f"- **Prompts.** {st['prompts']['verdict']}",
        ]
    if d.get("frontier_verdicts"):
        found += ["- **Pareto frontier** (equal mean k, paired over sequences):"]
        found += ["  " + line for line in _verdict_summary(d["frontier_verdicts"])]
    alpha_rows = [r for r in d.get("alpha_sensitivity", []) if r["family"] == f"bh-{method}"]
    if len(alpha_rows) >= 2:
        rs = sorted(alpha_rows, key=lambda r: r["param"])
        ks = [r["mean_k"] for r in rs]
        shape = "rose monotonically" if all(b >= a for a, b in zip(ks, ks[1:])) else "did not rise monotonically"
        found.append(
            f"- **α.** With the {method} null, mean experts per token {shape} with α: {fmt(ks[0])} at α = "
            f"{fmt(rs[0]['param'])} to {fmt(ks[-1])} at α = {fmt(rs[-1]['param'])} (perplexity "
            f"{fmt(rs[0]['ppl'])} to {fmt(rs[-1]['ppl'])}); at the largest α {fmt(100 * rs[-1]['share_at_max_k'])}% "
            f"of (token, layer) pairs hit max_k."
        )
    for fam in sorted({r["family"] for r in d.get("temperature_sensitivity", [])}):
        rs = sorted((r for r in d["temperature_sensitivity"] if r["family"] == fam), key=lambda r: r["param"])
        if len(rs) >= 2:
            found.append(
                f"- **Temperature** ({fam}, α = {fmt(cfg['alpha'])}): mean experts per token "
                + ", ".join(f"{fmt(r['mean_k'])} at T = {fmt(r['param'])}" for r in rs) + "."
            )
    tl = steps.get("token_level")
    if tl and tl["mean_k_by_kind"]:
        kinds = sorted(tl["mean_k_by_kind"].items(), key=lambda kv: kv[1]["mean"])
        lo, hi = kinds[0], kinds[-1]
        found.append(
            f"- **Tokens.** In the token-level sentence, {hi[0]} tokens used the most experts ({fmt(hi[1]['mean'])}, "
            f"n = {hi[1]['n']}) and {lo[0]} tokens the fewest ({fmt(lo[1]['mean'])}, n = {lo[1]['n']})."
        )
    u = d.get("utilization")
    if u:
        found.append(
            f"- **Load balance.** Mean coefficient of variation of expert load {fmt(u['bh']['mean_cv'])} with BH against "
            f"{fmt(u['topk']['mean_cv'])} with top-{k} (normalised entropy {fmt(u['bh']['mean_normalized_entropy'])} "
            f"against {fmt(u['topk']['mean_normalized_entropy'])})."
        )
    out += found or ["- This run holds no finished analysis steps yet."]
    out += [
        "",
        "### Caveats",
        "",
        f"- These numbers come from {cfg['eval_sequences']} evaluation sequences and {cfg['calib_sequences']} "
        "calibration sequences; the confidence intervals say how far they can be trusted."
        + (" A quick run shrinks every size: treat it as a smoke test, not a measurement." if cfg["quick"] else ""),
        "- Fewer experts per token is fewer (token, expert) pairs computed, not necessarily less wall-clock time: "
        "that depends on the experts backend and the hardware.",
        "",
        "### Next steps",
        "",
        "- Run the full configuration (`quick=False`) or another model (`bh-routing run --model …`).",
        "- Compare the nulls (`pvalues`), `min_k`/`max_k` and the weight rule on the Pareto frontier.",
    ]
    return "\n".join(out)
