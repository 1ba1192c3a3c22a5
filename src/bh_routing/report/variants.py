"""RESULTS.md section: the BH variants (which experts, which null, max_k above top-k), the
reported default and how it was chosen, BH's smallest α against top-1, temperature's shape."""

from __future__ import annotations

from .base import fmt, table
from .figures import NAMES
from .registry import Section, register_section


def _verdicts_by_family(verdicts: list[dict], families: list[str]) -> list[list]:
    rows = []
    for fam in families:
        vs = [v for v in verdicts if v["baseline"] == "topk" and v["bh"].startswith(f"BH-{fam[3:]}(")]
        counts = {w: sum(v["verdict"] == w for v in vs) for w in ("wins", "ties", "loses", "no verdict", "outside")}
        rows.append([NAMES.get(fam, fam), len(vs), counts["wins"], counts["ties"], counts["loses"],
                     counts["no verdict"], counts["outside"]])
    return rows


def section(res: dict, figures: list[str]) -> list[str]:
    d, steps, k = res["derived"], res["steps"], res["model"]["top_k"]
    runs = steps["alpha"]
    families = sorted({r["family"] for r in runs})
    out = [
        "## BH variants: how many from BH, which experts from whom",
        "",
        "BH answers *how many* experts a token gets (its rejection count k̂); *which* k̂ experts run is a "
        "separate choice. Variants swept (all on the Pareto figure): "
        + "; ".join(f"`{f[3:]}` = {NAMES.get(f, f)}" for f in families)
        + f". \"router's experts\": the router's own top k̂ by probability (BH's count, the model's choice of "
        f"experts); \"max_k 2K\": BH may give a token up to {min(2 * k, res['model']['num_experts'])} experts "
        f"instead of the model's {k}.",
        "",
    ]
    choice = steps.get("bh_default")
    if choice:
        out += [f"**Reported variant: `{choice['chosen']}`** ({choice['how']}): {choice['reason']}", ""]
        if choice.get("candidates"):
            out += [table(
                ["candidate", "α found", "mean k (calibration)", "loss (nats/token)", "perplexity", "note"],
                [[c["variant"], c["alpha"], c["calibration_k"], c["loss"], c["ppl"], c["reason"] or ""]
                 for c in choice["candidates"]],
            ), ""]
    if "frontier_verdicts" in d:
        rows = _verdicts_by_family(d["frontier_verdicts"], families)
        wins = sum(r[2] for r in rows)
        out += [
            "Against top-k at equal mean k, from the α sweep's own points (a BH point within 0.05 experts of a "
            "top-k point, paired over documents, Holm-adjusted; the rest *outside*; the matched comparisons of the "
            "reported variant are in the next section): "
            + ("**no BH variant is above the top-k frontier**: none wins." if wins == 0 else
               f"BH wins at {wins} setting(s)."),
            "",
            table(["variant", "settings", "wins", "ties", "loses", "no verdict", "outside"], rows),
            "",
        ]
    top1 = next((r for r in steps.get("frontier", []) if r["family"] == "topk" and r["param"] == 1), None)
    low = min(r["param"] for r in runs)
    at_low = [r for r in runs if r["param"] == low]
    if top1 and at_low:
        out += [
            f"Smallest α = {low:g} against top-1 (perplexity {fmt(top1['ppl'])} at k = 1): "
            + "; ".join(f"{r['label']} mean k {fmt(r['mean_k'])}, perplexity {fmt(r['ppl'])}" for r in at_low)
            + ". (Mean k above 1 is more compute than top-1: lower perplexity there is not a win at equal k.)",
            "",
        ]
    mono = d.get("temperature_monotone")
    if mono:
        out += [
            "Temperature (α = " + fmt(res["config"]["alpha"]) + "): mean k by temperature, measured: "
            + "; ".join(f"`{f[3:]}` {m['shape']} ({', '.join(f'T={t:g}: {fmt(x, 3)}' for t, x in zip(m['temperatures'], m['mean_k']))})"
                        for f, m in mono.items())
            + ".",
            "",
        ]
    return out


register_section(Section("variants", section, ("alpha",), 16))
