"""Run the benchmarks and write BENCHMARKS.md (and optionally JSON).

    python benchmarks/run.py                       # everything; writes BENCHMARKS.md
    python benchmarks/run.py --quick --json q.json # under a minute; the four headline keys
    python benchmarks/run.py --only routing,moe    # some sections (markdown only with --markdown)
    python benchmarks/run.py --skip-e2e            # everything but the bh-routing subprocess runs

Sections: routing (routing cost), moe (one real-size MoE block: compute saved, analyze
overhead), model (the embedded model: the same), memory (recording memory), e2e (bh-routing
run wall time). Every figure is a ratio of two things timed side by side in this run, the median
over repeats; see benchmarks/common.py. No test asserts a time: these are not tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from common import ROOT, machine  # noqa: E402

SECTIONS = ("routing", "moe", "model", "memory", "e2e")
GOALS = {
    "routing_cost_ratio": "<= 2 (never > 3)",
    "moe_block_time_ratio": "<= k/8 + 0.10",
    "analyze_overhead": "<= 0.10",
}


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats: under a minute")
    ap.add_argument("--json", type=Path, help="write all results as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the report here (default: BENCHMARKS.md for a full run)")
    ap.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--skip-e2e", action="store_true", help="do not time the bh-routing subprocess runs")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the in-process benchmarks (default 1: see BENCHMARKS.md, 'Threads')",
    )
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    if args.memory_child is not None:
        import bench_memory

        print(json.dumps(bench_memory.child(args.memory_child)))
        return 0

    sections = SECTIONS if args.only is None else tuple(s.strip() for s in args.only.split(","))
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"error: unknown sections {bad}; available: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.quick:
        sections = tuple(s for s in sections if s != "e2e") if args.only is None else sections
    if args.skip_e2e:
        sections = tuple(s for s in sections if s != "e2e")

    command = " ".join(["python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    results: dict = {"command": command, "quick": args.quick, "machine": machine(), "sections": list(sections)}
    log(f"machine: {results['machine']['cpu']}, torch threads {torch.get_num_threads()}")

    if "routing" in sections:
        import bench_routing

        results["routing"] = bench_routing.run(args.quick, log)
        if not args.quick:
            results["routing"]["before_after"] = bench_routing.before_after(log, repeats=7)
            results["routing"]["threads2"] = _routing_threads(bench_routing, 2, log)
    if "moe" in sections:
        import bench_moe

        results["moe"] = bench_moe.run(args.quick, log)
    if "model" in sections:
        import bench_model

        results["model"] = bench_model.run(args.quick, log) if bench_model.available() else {"skipped": "not built"}
    if "memory" in sections:
        import bench_memory

        results["memory"] = bench_memory.run(args.quick, log, threads=args.threads)
    if "e2e" in sections:
        import bench_e2e

        results["e2e"] = bench_e2e.run(args.quick, log)
    results["total_s"] = time.perf_counter() - started
    results.update(_headline(results))
    log(f"done in {results['total_s']:.1f} s: " + ", ".join(f"{k}={results[k]:.3f}" for k in _KEYS if k in results))

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    markdown = args.markdown or (ROOT / "BENCHMARKS.md" if not args.quick and args.only is None else None)
    if markdown:
        import report

        markdown.write_text(report.render(results))
        log(f"wrote {markdown}")
    return 0


def _routing_threads(bench_routing, threads: int, log) -> list[dict]:
    """The headline routing points again with ``threads`` torch threads (then back)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = []
        for method in ("empirical", "calibrated"):
            row = bench_routing.measure(65_536, 64, torch.float32, method, repeats=11)
            row["threads"] = threads
            log(f"routing {method} float32 with {threads} threads: ratio {row['ratio']:.2f}")
            rows.append(row)
        return rows
    finally:
        torch.set_num_threads(before)


_KEYS = ("routing_cost_ratio", "moe_block_time_ratio", "moe_block_mean_k", "analyze_overhead")


def _headline(results: dict) -> dict:
    """The top-level keys (quick run contract) and whether each goal is met."""
    out: dict = {}
    goals: dict = {}
    if "routing" in results:
        h = results["routing"]["headline"]
        out["routing_cost_ratio"] = h["empirical_float32"]
        out["routing_cost_ratio_calibrated"] = h["calibrated_float32"]
        worst = max(h.values())
        goals["routing_cost"] = {
            "value": out["routing_cost_ratio"],
            "goal": GOALS["routing_cost_ratio"],
            "met": out["routing_cost_ratio"] <= 2.0,
            "worst_of_methods_and_dtypes": worst,
            "worst_met": worst <= 2.0,
            "never_above_3": worst <= 3.0,
        }
    if "moe" in results:
        h = results["moe"]["headline"]
        out["moe_block_time_ratio"] = h["moe_block_time_ratio"]
        out["moe_block_mean_k"] = h["moe_block_mean_k"]
        out["analyze_overhead"] = h["analyze_overhead_block"]
        goals["moe_block_time"] = {
            "value": h["moe_block_time_ratio"],
            "goal": f"<= k/8 + 0.10 = {h['moe_block_goal']:.3f}",
            "met": h["moe_block_time_ratio"] <= h["moe_block_goal"],
        }
        goals["analyze_overhead_block"] = {
            "value": h["analyze_overhead_block"],
            "goal": GOALS["analyze_overhead"],
            "met": h["analyze_overhead_block"] <= 0.10,
        }
    if "model" in results and "headline" in results["model"]:
        h = results["model"]["headline"]
        out["analyze_overhead_embedded"] = h["analyze_overhead_embedded"]
        goals["analyze_overhead_embedded"] = {
            "value": h["analyze_overhead_embedded"],
            "goal": GOALS["analyze_overhead"],
            "met": h["analyze_overhead_embedded"] <= 0.10,
        }
    e2e = results.get("e2e", {}).get("rows", [])
    full = [r for r in e2e if r["command"] == "bh-routing run"]
    if full:
        goals["e2e_run"] = {"value": full[0]["wall_s"], "goal": "< 300 s", "met": full[0]["ok"] and full[0]["wall_s"] < 300}
    out["goals"] = goals
    return out


if __name__ == "__main__":
    sys.exit(main())
