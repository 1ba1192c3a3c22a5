"""Run the benchmarks and write BENCHMARKS.md (and optionally JSON).

    python benchmarks/run.py                       # everything; writes BENCHMARKS.md
    python benchmarks/run.py --quick --json q.json # under a minute; the four headline keys
    python benchmarks/run.py --only routing,moe    # some sections (markdown only with --markdown)
    python benchmarks/run.py --skip-e2e            # everything but the bh-routing subprocess runs
    python benchmarks/run.py --only generation     # generation speed; updates its section of BENCHMARKS.md
                                                   # and benchmarks/generation_speed.png
    python benchmarks/run.py --device cuda --markdown BENCHMARKS-gpu.md   # see benchmarks/gpu_check.sh

Sections: routing (routing cost), moe (one real-size MoE block: compute saved, analyze
overhead), model (the embedded model: the same), overhead (torch ops and host syncs per MoE layer
of the patch, and their time; benchmarks/bench_overhead.py), memory (recording memory), generation (tokens/s
of generate at the real size, by batch size), peakmem (peak GPU memory of bh-routing run --quick
on the full 16-layer model; GPU or --tiny only), e2e (bh-routing run wall time). Every figure is a
ratio of two things timed side by side in this run, the median over repeats; see
benchmarks/common.py. No test asserts a time: these are not tests.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from common import ROOT, machine, set_device  # noqa: E402

SECTIONS = ("routing", "moe", "model", "overhead", "memory", "generation", "peakmem", "e2e")
CPU_ONLY = ("model", "memory", "e2e")  # the embedded model on the CPU; not part of a GPU run
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GOALS = {
    "routing_cost_ratio": "<= 2 (never > 3)",
    "moe_block_time_ratio": "<= k/8 + 0.10",
    "analyze_overhead": "<= 0.10",
    "patch_overhead_decode": "<= 0.05",
    "decode_vs_ideal": ">= 0.70",
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where routing, moe, generation and peakmem run")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="generation dtype (default bfloat16); moe (default float32 on cpu, bfloat16 on cuda)")
    ap.add_argument("--layers", type=int, help="generation: model layers (default 2 on cpu, 16 on cuda)")
    ap.add_argument("--tiny", action="store_true", help="moe, generation and peakmem at tiny sizes (the CPU dry run of gpu_check.sh)")
    ap.add_argument("--figure", type=Path, help="generation figure (default benchmarks/generation_speed[_gpu].png; none for --quick)")
    ap.add_argument("--pytest-log", type=Path, help="a pytest log whose summary line goes into the report")
    ap.add_argument("--keep-going", action="store_true", help="a section that fails is reported, the others still run")
    ap.add_argument("--render", type=Path, help="only write --markdown from a saved --json of an earlier run")
    ap.add_argument("--section-from", action="append", default=[], metavar="NAME=JSON",
                    help="with --render: take section NAME from another run's --json (e.g. a section run again)")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--peak-child", nargs=3, metavar=("DTYPE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _validate(args) -> str | None:
    """The first problem with the options, or None (checked before anything runs)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        return f"--device must be cpu or cuda[:N], got {args.device!r}"
    if args.device != "cpu" and not torch.cuda.is_available():
        return f"--device {args.device} asked for, but no CUDA device is available"
    if args.layers is not None and not 1 <= args.layers <= 16:
        return f"--layers must be in [1, 16], got {args.layers}"
    if args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    if args.render is not None and args.markdown is None:
        return "--render needs --markdown FILE"
    if args.render is not None and not args.render.is_file():
        return f"--render: no such file {args.render}"
    return None


def main(argv=None) -> int:
    args = parse(argv)
    problem = _validate(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    sections = SECTIONS if args.only is None else tuple(s.strip() for s in args.only.split(","))
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"error: unknown sections {bad}; available: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.render is not None:
        import report

        saved = json.loads(args.render.read_text())
        saved.setdefault("total_s", 0.0)
        saved["rendered_by"] = " ".join(["python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
        saved.update(_headline(saved))
        for spec in args.section_from:  # the command line (in rendered_by) says where each section came from
            name, _, path = spec.partition("=")
            other = json.loads(Path(path).read_text())
            if name not in other:
                print(f"error: --section-from: no section {name!r} in {path}", file=sys.stderr)
                return 2
            saved[name] = other[name]
        if args.pytest_log is not None:  # e.g. a rerun of `pytest -m gpu` after the run
            saved["pytest"] = _pytest_summary(args.pytest_log)
        if saved["sections"] == ["generation"] and saved.get("device", "cpu") == "cpu":  # as --only generation does
            splice(args.markdown, report.generation_section(saved), report.GENERATION_START, report.GENERATION_END)
            splice(args.markdown, report.GPU_CHECK, report.GPU_CHECK_START, report.GPU_CHECK_END)
            return 0
        args.markdown.write_text(report.render(saved))
        if saved.get("device", "cpu") != "cpu" and not saved.get("tiny"):
            splice(ROOT / "docs" / "scaling.md", report.scaling_gpu_section(saved), report.SCALING_START, report.SCALING_END)
        return 0
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    if args.memory_child is not None:
        import bench_memory

        print(json.dumps(bench_memory.child(args.memory_child)))
        return 0
    if args.peak_child is not None:
        import bench_peakmem

        print(bench_peakmem.MARK + json.dumps(bench_peakmem.child(*args.peak_child, device=args.device, tiny=args.tiny)), flush=True)
        return 0

    gpu = args.device != "cpu"
    if args.only is None:  # the default set: what fits the device
        sections = tuple(s for s in sections if not (gpu and s in CPU_ONLY) and (s != "peakmem" or gpu or args.tiny))
    if args.quick:
        sections = tuple(s for s in sections if s != "e2e") if args.only is None else sections
    if args.skip_e2e:
        sections = tuple(s for s in sections if s != "e2e")
    set_device(args.device)
    gen_dtype = DTYPES[args.dtype or "bfloat16"]
    moe_dtype = DTYPES[args.dtype or ("bfloat16" if gpu else "float32")]

    command = " ".join(["python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    results: dict = {
        "command": command,
        "quick": args.quick,
        "device": args.device,
        "tiny": args.tiny,
        "machine": machine(),
        "sections": list(sections),
    }
    log(f"machine: {results['machine']['cpu']}, torch threads {torch.get_num_threads()}, GPU {results['machine']['gpu']}")
    if args.pytest_log is not None:
        results["pytest"] = _pytest_summary(args.pytest_log)

    def section(name: str, fn) -> None:
        if name not in sections:
            return
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - reported, see --keep-going
            if not args.keep_going:
                raise
            log(f"{name} failed: {exc!r}")
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        if gpu:
            torch.cuda.empty_cache()
        if args.json:  # what is done so far survives a later failure or a time limit
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")

    def routing():
        import bench_routing

        res = bench_routing.run(args.quick, log, device=args.device, tiny=args.tiny)
        if not args.quick and not gpu:
            res["before_after"] = bench_routing.before_after(log, repeats=7)
            res["threads2"] = _routing_threads(bench_routing, 2, log)
        return res

    def generation():
        import bench_generation

        res = bench_generation.run(args.quick, log, device=args.device, dtype=gen_dtype, layers=args.layers, tiny=args.tiny)
        figure = args.figure or (None if args.quick else ROOT / "benchmarks" / f"generation_speed{'_gpu' if gpu else ''}.png")
        if figure is not None:
            bench_generation.figure(res, figure)
            res["figure"] = str(figure.relative_to(ROOT) if figure.resolve().is_relative_to(ROOT) else figure)
            log(f"wrote {figure}")
        return res

    def model():
        import bench_model

        return bench_model.run(args.quick, log) if bench_model.available() else {"skipped": "not built"}

    section("routing", routing)
    section("moe", lambda: __import__("bench_moe").run(args.quick, log, device=args.device, dtype=moe_dtype, tiny=args.tiny))
    section("model", model)
    section(
        "overhead",
        lambda: __import__("bench_overhead").run(device=args.device, timing=not args.quick, repeats=15, log=log),
    )
    section("memory", lambda: __import__("bench_memory").run(args.quick, log, threads=args.threads))
    section("generation", generation)
    def save_partial(name: str):
        def save(partial: dict) -> None:
            results[name] = partial
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")

        return save

    section(
        "peakmem",
        lambda: __import__("bench_peakmem").run(
            log, device=args.device, tiny=args.tiny, threads=args.threads, on_progress=save_partial("peakmem")
        ),
    )
    section("e2e", lambda: __import__("bench_e2e").run(args.quick, log))
    results["total_s"] = time.perf_counter() - started
    results.update(_headline(results))
    log(f"done in {results['total_s']:.1f} s: " + ", ".join(f"{k}={results[k]:.3f}" for k in _KEYS if k in results))

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    import report

    markdown = args.markdown or (ROOT / "BENCHMARKS.md" if not args.quick and args.only is None and not gpu else None)
    if markdown:
        markdown.write_text(report.render(results))
        log(f"wrote {markdown}")
        if gpu and not args.tiny:  # the GPU section of docs/scaling.md comes from the same run
            splice(ROOT / "docs" / "scaling.md", report.scaling_gpu_section(results), report.SCALING_START, report.SCALING_END)
            log("updated the GPU section of docs/scaling.md")
    elif sections == ("generation",) and not args.quick and not gpu and not args.tiny:
        target = ROOT / "BENCHMARKS.md"
        splice(target, report.generation_section(results), report.GENERATION_START, report.GENERATION_END)
        splice(target, report.GPU_CHECK, report.GPU_CHECK_START, report.GPU_CHECK_END)
        log(f"updated the generation and GPU-check sections of {target}")
    return 0


def splice(path: Path, text: str, start: str, end: str) -> None:
    """Replace the block of ``path`` between the markers ``start`` and ``end``, or append it."""
    old = path.read_text() if path.is_file() else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def _pytest_summary(path: Path) -> dict:
    """The last summary line of a pytest log ("== 3 passed, 1 skipped in 2.1s ==") and its exit code."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    lines = [ln.strip("= ").strip() for ln in text.splitlines() if re.search(r"\b(passed|failed|skipped|error|deselected|no tests ran)\b", ln)]
    code = re.findall(r"^PYTEST-EXIT (\d+)$", text, flags=re.M)
    errors = [ln[len("ERROR "):].strip() for ln in text.splitlines() if ln.startswith("ERROR ")]
    reasons = sorted({ln[1:].strip() for ln in text.splitlines() if ln.startswith("E   ") and "Error" in ln})
    return {
        "summary": lines[-1] if lines else "no summary (pytest did not run)",
        "exit_code": int(code[-1]) if code else None,
        "errors": [f"{e} ({'; '.join(reasons)})" if reasons else e for e in errors],
    }


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


_KEYS = (
    "routing_cost_ratio",
    "moe_block_time_ratio",
    "moe_block_mean_k",
    "analyze_overhead",
    "decode_speedup_bh_batch1",
    "decode_bh_mean_k",
    "patch_overhead_decode",
    "decode_speedup_bh_batch16",
)


def _headline(results: dict) -> dict:
    """The top-level keys (quick run contract) and whether each goal is met."""
    out: dict = {}
    goals: dict = {}
    if "headline" in results.get("routing", {}):
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
    if "headline" in results.get("moe", {}):
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
    if "headline" in results.get("generation", {}):
        h = results["generation"]["headline"]
        for key in ("decode_speedup_bh_batch1", "decode_bh_mean_k", "patch_overhead_decode", "decode_speedup_bh_batch16"):
            if key in h:
                out[key] = h[key]
        if "patch_overhead_decode" in h:
            goals["patch_overhead_decode"] = {
                "value": h["patch_overhead_decode"],
                "goal": GOALS["patch_overhead_decode"],
                "met": h["patch_overhead_decode"] <= 0.05,
            }
        if "decode_speedup_share_of_ideal" in h:
            goals["decode_vs_ideal"] = {
                "value": h["decode_speedup_share_of_ideal"],
                "goal": GOALS["decode_vs_ideal"],
                "met": h["decode_speedup_share_of_ideal"] >= 0.70,
            }
            goals["decode_gain_vs_ideal"] = {
                "value": h["decode_gain_share_of_ideal"],
                "goal": GOALS["decode_vs_ideal"],
                "met": h["decode_gain_share_of_ideal"] >= 0.70,
            }
    e2e = results.get("e2e", {}).get("rows", [])
    full = [r for r in e2e if r["command"] == "bh-routing run"]
    if full:
        goals["e2e_run"] = {"value": full[0]["wall_s"], "goal": "< 300 s", "met": full[0]["ok"] and full[0]["wall_s"] < 300}
    out["goals"] = goals
    return out


if __name__ == "__main__":
    sys.exit(main())
