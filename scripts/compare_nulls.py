"""Measure the two calibration nulls ("unrouted" vs "all") of the calibrated p-values.

For each null: fit on the calibration split, run the BH α sweep in patch mode on the evaluation
split, and compare at equal mean experts per token (paired over sequences, the same rule as the
Pareto verdicts of the report). Writes docs/calibration_nulls.md.

    python scripts/compare_nulls.py [--model PATH] [--out runs/nulls]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bh_routing import RunConfig, Study
from bh_routing.analysis.derive import frontier_verdicts
from bh_routing.report import fmt

ALPHAS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="runs/nulls")
    ap.add_argument("--doc", default="docs/calibration_nulls.md")
    args = ap.parse_args()
    runs, tables = {}, {}
    for null in ("unrouted", "all"):
        cfg = RunConfig(model=args.model, pvalues=["calibrated"], bh_pvalues="calibrated", null=null,
                        strategies=["topk"], alphas=ALPHAS)
        study = Study(cfg, Path(args.out) / null)
        res = study.run("alpha", "frontier")
        runs[null] = [dict(r, family=f"bh-{null}") for r in res["steps"]["alpha"]]
        tables[null] = res["derived"]["alpha_sensitivity"]
        model_name = res["model"]["name"]
    verdicts = frontier_verdicts(runs["unrouted"], runs["all"], documents=study.inputs.eval_documents)
    lines = [
        "# Calibration nulls: \"unrouted\" vs \"all\"",
        "",
        f"Model: {model_name}. Command: `python scripts/compare_nulls.py"
        + (f" --model {args.model}" if args.model else "") + "`.",
        f"Calibration on {cfg.calib_sequences} sequences and evaluation on {cfg.eval_sequences} other sequences of "
        f"{cfg.seq_len} tokens; BH in patch mode, min_k={cfg.min_k}, max_k = the model's top-k.",
        "",
        "| α | mean k (unrouted) | ppl / top-k (unrouted) | mean k (all) | ppl / top-k (all) |",
        "|---|---|---|---|---|",
    ]
    for u, a in zip(tables["unrouted"], tables["all"]):
        lines.append(f"| {fmt(u['param'])} | {fmt(u['mean_k'])} | {fmt(u['ppl_ratio'])} | {fmt(a['mean_k'])} | {fmt(a['ppl_ratio'])} |")
    lines += ["", "At equal mean k (\"all\" interpolated to the mean k of each \"unrouted\" setting, paired over sequences; "
              "Δ = loss(unrouted) − loss(all) in nats per token):", "",
              "| unrouted setting | mean k | Δ loss | 95% CI | verdict for \"unrouted\" |", "|---|---|---|---|---|"]
    for v in verdicts:
        ci = "n/a" if v["ci_low"] is None else f"{fmt(v['ci_low'])} to {fmt(v['ci_high'])}"
        lines.append(f"| {v['bh']} | {fmt(v['mean_k'])} | {fmt(v['mean_diff'])} | {ci} | {v['verdict']} |")
    Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(args.doc).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(json.dumps({"wrote": args.doc}))


if __name__ == "__main__":
    main()
