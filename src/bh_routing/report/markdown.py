"""RESULTS.md, written from a results dict only: every number is the run's own.

:func:`render` writes the header, every registered section whose results are present (in their
``order``), and the "Reproduce" section; :func:`conclusions` is the notebook's last cell.
"""

from __future__ import annotations

from .base import fmt
from .fdr_oracle import fdr_oracle_summary
from .registry import available, sections_in_order
from .evidence import grid_counts, primary_sentence


def render(res: dict, figures: list[str]) -> str:
    cfg, model, env = res["config"], res["model"], res["environment"]
    k = model["top_k"]
    out = [
        "# BH routing: results",
        "",
        f"Model **{model['name']}** ({model['model_class']}, {model['num_moe_layers']} MoE layers × "
        f"{model['num_experts']} experts, top-{k}, norm_topk_prob={model['norm_topk_prob']}; "
        f"{fmt(model['total_params'] / 1e6)} M parameters, {fmt(model['active_params'] / 1e6)} M active per token), "
        f"{model['dtype']} on {model['device']}, experts backend `{model['experts_implementation']}`.",
        (data_line(res) + " " if res["eval_domains"] else "")
        + f"Seed {cfg['seed']}{', quick run' if cfg.get('quick') else ''}. "
        f"torch {env['torch']}, transformers {env['transformers']}, bh-routing {env['bh_routing']}.",
        "",
        "Every number below was computed by this run; `bh_routing_results.json` holds them all with the configuration.",
        "",
    ]
    have = available(res)
    for section in sections_in_order():
        if all(n in have for n in section.needs):
            out += section.render(res, figures)
    threads = env.get("cpu_threads")
    out += ["## Reproduce", "", "The configuration of this run is under `config` in `bh_routing_results.json`; "
            "the same seed on the same number of torch threads gives the same numbers (another thread count "
            "changes the order of floating-point sums, which moves the last digits and, rarely, a token's "
            "count at a BH threshold):", "", "```bash",
            f"bh-routing run --config bh_routing_results.json{f' --threads {threads}' if threads else ''} "
            "--out <another folder>", "```", ""]
    out += run_time(env)
    return "\n".join(out)


def run_time(env: dict) -> list[str]:
    """Where the run's time went: each step's wall seconds when it was computed, largest first."""
    seconds = env.get("step_seconds") or {}
    if not seconds:
        return []
    total, threads = sum(seconds.values()), env.get("cpu_threads")
    parts = ", ".join(f"{name} {fmt(s)} s" for name, s in sorted(seconds.items(), key=lambda x: -x[1]) if s >= 0.5)
    return [f"**Run time.** {fmt(total)} s of wall time in the steps ({threads} torch thread{'' if threads == 1 else 's'} on "
            f"{env.get('cuda') or 'the CPU'}; a shared machine's load adds to it): {parts}. A step resumed from an "
            "earlier run counts the time it took then.", ""]


def data_line(res: dict, *, short: bool = False) -> str:
    """What the run evaluated on: documents and windows, evaluation and calibration."""
    cfg, ev = res["config"], res.get("evaluation")
    if not ev:  # results of an older version
        return f"{cfg['eval_sequences']} held-out sequences × {cfg['seq_len']} tokens"
    doms = ", ".join(f"{n} {d}" for d, n in ev["documents_per_domain"].items())
    cal = ev["calibration"]
    unit = "documents" if ev["unit"] == "document" else "windows (the text has no document boundaries)"
    if short:
        return f"{ev['documents']} held-out {unit} ({ev['sequences']} windows of {ev['seq_len']} tokens)"
    return (f"Evaluation: {ev['documents']} held-out {unit} ({doms}), {ev['sequences']} windows of {ev['seq_len']} tokens; "
            f"calibration on {cal['sequences']} windows of {cal['documents']} other documents.")


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
        f"{data_line(res, short=True)}, seed {cfg['seed']}"
        + (", quick run" if cfg["quick"] else "")
    )
    out = ["## Conclusions", "", f"Generated from this run's results: {run}.", ""]
    found: list[str] = []
    st = d.get("statistics")
    if st:
        red = st["expert_reduction_pct"]
        found += [
            f"- **Experts.** BH ({st['documents']['a']}) used {fmt(st['experts']['mean_a'])} experts per token "
            f"against {k} for top-{k}: a reduction of {fmt(red['mean'])}% (95% CI {fmt(red['ci_low'])} to "
            f"{fmt(red['ci_high'])}).",
            f"- **Quality.** Held-out perplexity {fmt(st['ppl_bh']['ppl'])} with BH (95% CI "
            f"{fmt(st['ppl_bh']['ci_low'])}–{fmt(st['ppl_bh']['ci_high'])}) against {fmt(st['ppl_topk']['ppl'])} with "
            f"top-{k} ({fmt(st['ppl_topk']['ci_low'])}–{fmt(st['ppl_topk']['ci_high'])}). {st['documents']['verdict']}",
            f"- **Prompts.** {st['prompts']['verdict']}",
        ]
    if d.get("matched"):
        found += [f"- **Matched k.** {primary_sentence(d['matched'])}"]
        found += ["  " + line for line in grid_counts(d["matched"])]
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
    fo = steps.get("fdr_oracle")
    if fo:
        found.append("- **What α bounds** (ablation oracle, τ = " + fmt(fo["tau"]) + "): " + fdr_oracle_summary(fo))
    out += found or ["- This run holds no finished analysis steps yet."]
    out += [
        "",
        "### Caveats",
        "",
        f"- These numbers come from {data_line(res, short=True)}; the intervals are over documents and say how far "
        "they can be trusted; below 20 documents no verdict is given."
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
