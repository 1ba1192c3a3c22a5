"""Routing cost: a full BH routing step against the model's own softmax + top-k router.

Baseline (A): exactly what ``OlmoeTopKRouter.forward`` does after its linear layer -
``softmax(logits, dtype=float32)``, ``topk(k)``, weights cast back to the logits' dtype
(``norm_topk_prob=False``, as OLMoE-1B-7B).
Candidate (B): ``BH(alpha).route(logits, layer=0, model_top_k=k)`` - input validation,
p-values, the BH step-up, weights and the padded (T, k) output - the whole routing step.

Logits: standard normal (T, E) with 3 random experts per token raised by 2.5 (so that some
experts stand out, as in a trained router); k = min(8, E). The calibrated and standardized
methods use a calibration fitted on 16,384 further tokens of the same distribution (reservoir
4,096 and pooled standardised null 65,536, the defaults, null "unrouted").

``run`` times ``selection="pvalue"`` (BH's own rejection set); ``run_selection`` times
``selection="router"`` (BH's count, the router's top-k experts: a ``topk`` of width max_k plus
the count, see ``bh_routing.core.router_count``) for every p-value method, goal <= 1.5x at every
point of the grid. Standalone: ``python benchmarks/bench_routing.py --selection router``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from bh_routing import BH, CalibrationBuilder, TopK
from bh_routing.core.strategies.base import KEY_SORT_MIN

from common import device_flag, docstring, failed, gpu_run, paired, prose, rounds, table

ALPHA = 0.05


def make_logits(t: int, e: int, *, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(t, e, generator=g)  # (T, E)
    boosted = torch.rand(t, e, generator=g).argsort(dim=-1)[:, : min(3, e)]  # (T, 3) random experts
    z.scatter_add_(1, boosted, torch.full(boosted.shape, 2.5))
    return z.to(dtype)


def topk_router(logits: torch.Tensor, k: int):
    """The ops of OlmoeTopKRouter after F.linear: softmax in float32, top-k, weights in the logits' dtype."""
    probs = torch.softmax(logits, dtype=torch.float, dim=-1)  # (T, E)
    values, indices = torch.topk(probs, k, dim=-1)  # (T, k)
    return values.to(logits.dtype), indices


def make_strategy(method: str, e: int, k: int, *, device: str = "cpu", selection: str = "pvalue") -> BH:
    if method == "empirical":
        return BH(ALPHA, selection=selection)
    builder = CalibrationBuilder(num_layers=1, num_experts=e, top_k=k)
    builder.update(0, make_logits(16_384, e, seed=1))
    cal = builder.finalize(model_name="benchmark", model_fingerprint="benchmark")
    return BH(ALPHA, pvalues=method, calibration=cal.to(device), selection=selection)


def measure(
    t: int, e: int, dtype: torch.dtype, method: str, *, repeats: int, device: str = "cpu", selection: str = "pvalue"
) -> dict:
    k = min(8, e)
    logits = make_logits(t, e, seed=0, dtype=dtype).to(device)
    strategy = make_strategy(method, e, k, device=device, selection=selection)
    extra = {}
    with torch.inference_mode():
        if selection == "router":  # also the patched top-k, which takes the router's top-k the same way
            topk = TopK(k)
            r = rounds(lambda: topk_router(logits, k), {
                "bh": lambda: strategy.route(logits, layer=0, model_top_k=k, norm_topk_prob=False),
                "topk": lambda: topk.route(logits, layer=0, model_top_k=k, norm_topk_prob=False),
            }, repeats=repeats)
            times = (r["bh"]["topk_s"], r["bh"]["bh_s"], r["bh"]["ratio"])
            extra = {"topk_route_ms": 1e3 * r["topk"]["bh_s"], "ratio_to_topk_route": r["bh"]["bh_s"] / r["topk"]["bh_s"]}
        else:
            res = paired(
                lambda: topk_router(logits, k),
                lambda: strategy.route(logits, layer=0, model_top_k=k, norm_topk_prob=False),
                repeats=repeats,
            )
            times = (res.a_median, res.b_median, res.ratio)
        mean_k = float(strategy.route(logits, layer=0, model_top_k=k).counts.float().mean())
    return {
        "T": t,
        "E": e,
        "k": k,
        "dtype": str(dtype).replace("torch.", ""),
        "method": method,
        "topk_ms": 1e3 * times[0],
        "bh_ms": 1e3 * times[1],
        "ratio": times[2],
        "repeats": repeats,
        "bh_mean_k": mean_k,
        "selection": selection,
        **extra,
    }


def grid(quick: bool, *, tiny: bool = False) -> list[tuple[int, int]]:
    """(T, E) points: the headline 65,536 x 64, scaling in T at E = 64 and in E at T = 65,536.

    ``tiny``: 4,096 x 64 only (the CPU dry run of gpu_check.sh; not a headline).
    """
    if tiny:
        return [(4_096, 64)]
    if quick:
        return [(65_536, 64)]
    ts = [(1_024, 64), (8_192, 64), (65_536, 64), (262_144, 64)]
    es = [(65_536, 8), (65_536, 128), (65_536, 256)]
    return ts + es


def run(quick: bool, log, *, device: str = "cpu", tiny: bool = False) -> dict:
    repeats = 9 if quick or device != "cpu" else 15
    rows = []
    for t, e in grid(quick, tiny=tiny):
        for method in ("empirical", "calibrated"):
            for dtype in (torch.float32, torch.bfloat16):
                row = measure(t, e, dtype, method, repeats=repeats, device=device)
                log(
                    f"routing T={t} E={e} {row['dtype']} {method}: top-k {row['topk_ms']:.1f} ms, "
                    f"BH {row['bh_ms']:.1f} ms, ratio {row['ratio']:.2f}"
                )
                rows.append(row)

    head_t = grid(quick, tiny=tiny)[0][0] if tiny else 65_536

    def pick(method, dtype):
        return next(
            r["ratio"] for r in rows if (r["T"], r["E"], r["method"], r["dtype"]) == (head_t, 64, method, dtype)
        )

    headline = {
        "empirical_float32": pick("empirical", "float32"),
        "empirical_bfloat16": pick("empirical", "bfloat16"),
        "calibrated_float32": pick("calibrated", "float32"),
        "calibrated_bfloat16": pick("calibrated", "bfloat16"),
    }
    return {"rows": rows, "headline": headline, "alpha": ALPHA, "device": device}


SELECTION_METHODS = ("empirical", "calibrated", "standardized")
SELECTION_GOAL = 1.5  # routing cost of selection="router" / the model's top-k router, every grid point


def run_selection(quick: bool, log, *, device: str = "cpu", tiny: bool = False, points=None, repeats=None) -> dict:
    """``selection="router"`` over the grid, every p-value method, float32 and bfloat16."""
    repeats = repeats or (9 if quick or device != "cpu" else 15)
    rows = []
    for t, e in points or grid(quick, tiny=tiny):
        for method in SELECTION_METHODS:
            for dtype in (torch.float32, torch.bfloat16):
                row = measure(t, e, dtype, method, repeats=repeats, device=device, selection="router")
                log(
                    f"routing (router selection) T={t} E={e} {row['dtype']} {method}: top-k {row['topk_ms']:.2f} ms, "
                    f"BH {row['bh_ms']:.2f} ms, ratio {row['ratio']:.2f}"
                )
                rows.append(row)
    worst = max(rows, key=lambda r: r["ratio"])
    return {
        "rows": rows,
        "alpha": ALPHA,
        "device": device,
        "goal": SELECTION_GOAL,
        "worst": worst,
        "met": all(r["ratio"] <= SELECTION_GOAL for r in rows),
    }


# --- the routing step as it was before the hot-path work (commit 50774f6), for before/after ---------
def reference_route(logits: torch.Tensor, strategy: BH, k: int):
    """BH routing with the original implementation's operations (same results, older ops).

    Elementwise isfinite validation (twice: route and p-values), two ``torch.median`` calls,
    ``torch.where`` z-scores, ``torch.searchsorted`` for conformal counts, ``torch.sort(stable)``
    of all E p-values (after a stable sort by descending logit: the tie rule BH has now, which
    the original broke by index) and a multiply-and-max for the step-up.
    """
    from bh_routing.core.pvalues import MAD_TO_SD

    for _ in range(2):
        if not bool(torch.isfinite(logits).all()):
            raise ValueError("logits must be finite")
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # (T, E)
    z = logits.float()
    if strategy.pvalues == "empirical":
        centre = z.median(dim=-1, keepdim=True).values
        scale = MAD_TO_SD * (z - centre).abs().median(dim=-1, keepdim=True).values
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zscore = torch.where(scale > 0, (z - centre) / safe, torch.zeros_like(z))
        p = torch.special.ndtr(-zscore)
    else:
        cal = strategy.calibration
        table, n = cal.null_sorted[0], cal.null_count[0]
        below = torch.searchsorted(table, z.T.contiguous(), side="left")
        p = ((1.0 + (table.shape[1] - below).float()) / (n.float().unsqueeze(1) + 1.0)).T.clamp(max=1.0)
    e = p.shape[-1]
    # ties in p go to the router's preference (larger logit, then lower index), as BH does now
    first = torch.sort(logits.float(), dim=-1, descending=True, stable=True).indices
    sorted_p, second = torch.sort(p.gather(1, first), dim=-1, stable=True)
    order = first.gather(1, second)
    # the thresholds exactly as the current code compares them (float64, rounded down to float32)
    from bh_routing.core.bh import _round_down

    thresholds = _round_down((torch.arange(1, e + 1, dtype=torch.float64) / e) * strategy.alpha, torch.float32)
    below = sorted_p <= thresholds
    counts = (below * torch.arange(1, e + 1)).amax(dim=-1).clamp(strategy.min_k, k)
    idx = order[:, :k]
    used = torch.arange(k) < counts.unsqueeze(-1)
    indices = torch.where(used, idx, torch.full_like(idx, e))
    weights = probs.gather(1, idx) * used
    return indices, weights.to(logits.dtype), counts


def before_after(log, *, repeats: int) -> list[dict]:
    """Routing cost at 65,536 x 64 float32 of the original ops and of the current code, each vs top-k."""
    t, e, k = 65_536, 64, 8
    logits = make_logits(t, e, seed=0)
    rows = []
    for method in ("empirical", "calibrated"):
        strategy = make_strategy(method, e, k)
        with torch.inference_mode():
            old = reference_route(logits, strategy, k)
            new = strategy.route(logits, layer=0, model_top_k=k)
            same = all(torch.equal(a, b) for a, b in zip(old, (new.indices, new.weights, new.counts)))
            res = rounds(
                lambda: topk_router(logits, k),
                {
                    "before": lambda: reference_route(logits, strategy, k),
                    "after": lambda: strategy.route(logits, layer=0, model_top_k=k, norm_topk_prob=False),
                },
                repeats=repeats,
            )
        row = {
            "T": t,
            "E": e,
            "method": method,
            "before_ratio": res["before"]["ratio"],
            "after_ratio": res["after"]["ratio"],
            "speedup": res["before"]["bh_s"] / res["after"]["bh_s"],
            "identical_output": same,
        }
        log(
            f"routing before/after {method}: {row['before_ratio']:.2f}x -> {row['after_ratio']:.2f}x top-k "
            f"(identical output: {same})"
        )
        rows.append(row)
    return rows


FUSED_POINTS = ((1, 64), (16, 64), (64, 64), (1_024, 64))  # decode and small-prefill blocks


def run_fused(log, *, device: str = "cpu", points=FUSED_POINTS, repeats: int = 15) -> dict:
    """The routing step as one fused step: ``torch.compile`` of the routing function against eager.

    For (T, E) blocks at decode sizes: the model's top-k router, BH's routing step eager
    (``Strategy._route``: what the patch runs, the logits check being a device-side sum) and the
    same function compiled (``torch.compile(fullgraph=True, dynamic=False)``, inductor: one or a
    few fused kernels instead of tens of small ones), for BH empirical with p-value and router
    selection and BH calibrated with router selection. Outputs compared (indices and counts equal,
    weights within 1e-6). Ratios to the top-k router in the same rounds.
    """
    rows = []
    for t, e in points:
        k = min(8, e)
        logits = make_logits(t, e, seed=0).to(device)
        for method, selection in (("empirical", "pvalue"), ("empirical", "router"), ("calibrated", "router")):
            strategy = make_strategy(method, e, k, device=device, selection=selection)

            def eager(s=strategy, z=logits):
                return s._route(z, layer=0, model_top_k=k)

            torch._dynamo.reset()  # every row's closure shares one code object: a fresh cache, no recompile limit
            fused = torch.compile(eager, fullgraph=True, dynamic=False)
            with torch.inference_mode():
                a, b = eager(), fused()
                same = torch.equal(a.indices, b.indices) and torch.equal(a.counts, b.counts)
                close = bool(torch.allclose(a.weights, b.weights, rtol=1e-6, atol=1e-7))
                res = rounds(lambda z=logits: topk_router(z, k), {"eager": eager, "fused": fused}, repeats=repeats)
            row = {"T": t, "E": e, "method": method, "selection": selection, "device": device,
                   "topk_ms": 1e3 * res["eager"]["topk_s"], "eager_ms": 1e3 * res["eager"]["bh_s"],
                   "fused_ms": 1e3 * res["fused"]["bh_s"], "eager_ratio": res["eager"]["ratio"],
                   "fused_ratio": res["fused"]["ratio"], "same_choice": same, "weights_close": close}
            log(f"fused routing T={t} E={e} {method}/{selection}: eager {row['eager_ratio']:.2f}x, "
                f"compiled {row['fused_ratio']:.2f}x top-k (same choice: {same})")
            rows.append(row)
    return {"rows": rows, "device": device}


def fused_table(res: dict) -> str:
    header = ["T", "E", "p-values / selection", "top-k router ms", "BH eager ms", "BH compiled ms", "eager / top-k",
              "compiled / top-k", "same choice"]
    rows = [
        [f"{r['T']:,}", r["E"], f"{r['method']} / {r['selection']}", f"{r['topk_ms']:.3f}", f"{r['eager_ms']:.3f}",
         f"{r['fused_ms']:.3f}", f"{r['eager_ratio']:.2f}x", f"**{r['fused_ratio']:.2f}x**", r["same_choice"] and r["weights_close"]]
        for r in res["rows"]
    ]
    return table(header, rows) + "\n"


# --- section 1 of BENCHMARKS.md, and what it says under the missed goals


def section(r: dict) -> str:
    """Section 1, the routing cost, from the results of benchmarks/run.py."""
    res = r["routing"]
    if "error" in res:
        return failed("routing", res)
    s = ["## 1. Routing cost\n", docstring(__doc__), ""]
    s.append(f"Command: `python benchmarks/run.py --only routing{device_flag(gpu_run(r))} --markdown FILE` (BH alpha = {res['alpha']}).\n")
    rows = [
        [
            f"{x['T']:,}",
            x["E"],
            x["k"],
            x["dtype"],
            x["method"],
            f"{x['topk_ms']:.1f}",
            f"{x['bh_ms']:.1f}",
            f"**{x['ratio']:.2f}x**",
            f"{x['bh_mean_k']:.2f}",
        ]
        for x in res["rows"]
    ]
    s.append(table(["T", "E", "k", "dtype", "p-values", "top-k router ms", "BH route ms", "BH / top-k", "BH mean k"], rows))
    worst = max(res["rows"], key=lambda x: x["ratio"])
    over2 = [x for x in res["rows"] if x["ratio"] > 2.0]
    s.append(
        f"\nLargest ratio in the table: {worst['ratio']:.2f}x (T = {worst['T']:,}, E = {worst['E']}, "
        f"{worst['dtype']}, {worst['method']}); {len(over2)} of {len(res['rows'])} points above 2x"
        + (": " + ", ".join(f"{x['T']:,} x {x['E']} {x['dtype']} {x['method']} ({x['ratio']:.2f}x)" for x in over2) if over2 else "")
        + "."
    )
    if res.get("threads2"):
        s.append("\nThe 65,536 x 64 float32 points with **2 torch threads** (same process, after the rest):\n")
        s.append(
            table(
                ["p-values", "top-k router ms", "BH route ms", "BH / top-k"],
                [[x["method"], f"{x['topk_ms']:.1f}", f"{x['bh_ms']:.1f}", f"{x['ratio']:.2f}x"] for x in res["threads2"]],
            )
        )
    if res.get("before_after"):
        s.append("\n" + prose("routing-before-after") + "\n")
        s.append(
            table(
                ["p-values", "before: BH / top-k", "after: BH / top-k", "speed-up", "identical output"],
                [
                    [x["method"], f"{x['before_ratio']:.2f}x", f"{x['after_ratio']:.2f}x", f"{x['speedup']:.1f}x", x["identical_output"]]
                    for x in res["before_after"]
                ],
            )
        )
        s.append("\n" + prose("routing-what-changed"))
    return "\n".join(s) + "\n"


def missed(r: dict) -> list[str]:
    """The routing points above 3x, and above 2x at E > 64 or with 2 threads, with the reason: notes of 'Missed goals'."""
    gpu = gpu_run(r)
    notes = []
    rows = r.get("routing", {}).get("rows", [])
    above3 = [x for x in rows if x["ratio"] > 3.0]
    small_cal = [x for x in above3 if x["method"] == "calibrated" and x["T"] < 8 * 4096]
    if above3:
        notes.append(
            "- **routing cost above 3x** at "
            + ", ".join(f"T = {x['T']:,}, E = {x['E']}, {x['dtype']}, {x['method']} ({x['ratio']:.2f}x; {x['bh_ms']:.1f} vs {x['topk_ms']:.1f} ms)" for x in above3)
            + "."
            + (
                " Why: on the GPU every point is bound by kernel launches and host reads (see routing_cost above)."
                if gpu
                else " " + prose("routing-why-calibrated")
                if small_cal
                else ""
            )
        )
    over2e = [x for x in rows if x["ratio"] > 2.0 and x["E"] > 64 and x["T"] == 65_536]
    if over2e:
        notes.append(
            "- **routing cost above 2x at E > 64**: "
            + ", ".join(f"E = {x['E']} {x['dtype']} {x['method']} ({x['ratio']:.2f}x)" for x in over2e)
            + (". Why: top-k's partial selection grows slowly with E, while BH computes a p-value for "
               "every expert and sorts all E of them per token (the step-up needs the full order)." if not gpu else ".")
        )
    t2 = [x for x in r.get("routing", {}).get("threads2", []) if x["ratio"] > 2.0]
    if t2:
        notes.append(
            "- **with 2 torch threads** the routing ratio is "
            + ", ".join(f"{x['ratio']:.2f}x ({x['method']})" for x in t2)
            + ". Why: on this shared 2-vCPU machine each parallelised torch op of BH's sequence waits "
            "for the busier core; top-k is two ops (see 'Threads')."
        )
    return notes


def why_missed(name: str, r: dict) -> str:
    """Why the goal ``name`` was missed, if it is the routing cost's on a GPU; else ''."""
    if name != "routing_cost" or not gpu_run(r):
        return ""
    x = next(x for x in r["routing"]["rows"] if (x["T"], x["E"], x["method"], x["dtype"]) == (65_536, 64, "empirical", "float32"))
    return (
        f" Why: on the GPU both are tiny - top-k {x['topk_ms']:.2f} ms, BH {x['bh_ms']:.2f} ms at 65,536 x 64 - and "
        "bound by kernel launches and host reads, not arithmetic: the router is two kernels, BH a sequence of "
        "small ones (validation, p-values, sort, step-up, weights) with host reads of data-dependent sizes. "
        "The ratio says little about end-to-end cost; the generation section measures that."
    )


SELECTION_START, SELECTION_END = "<!-- routing-selection:start -->", "<!-- routing-selection:end -->"


def selection_machine() -> dict:
    """What the router-selection timings ran on (they are ratios, but the reader should know)."""
    import os

    import numba
    import numpy

    from common import cpu_model, git_commit

    return {"cpu": cpu_model(), "load": [round(v, 2) for v in os.getloadavg()], "commit": git_commit(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "numpy": numpy.__version__, "numba": numba.__version__}


def selection_section(res: dict, command: str) -> str:
    """The BENCHMARKS.md subsection of a router-selection run (spliced between SELECTION_START/END)."""
    m, w = res["machine"], res["worst"]
    both = all("topk_route_ms" in r for r in res["rows"])  # older runs timed the model's router alone
    rows = [[f"{r['T']:,}", r["E"], r["dtype"], r["method"], f"{r['topk_ms']:.2f}", f"{r['bh_ms']:.2f}",
             f"**{r['ratio']:.2f}x**"] + ([f"{r['topk_route_ms']:.2f}", f"{r['ratio_to_topk_route']:.2f}x"] if both else [])
            + [f"{r['bh_mean_k']:.2f}"] for r in res["rows"]]
    above = [r for r in res["rows"] if r["ratio"] > res["goal"]]
    verdict = (f"every point at or under {res['goal']}x: **goal met**" if res["met"] else
               f"**goal missed** at {len(above)} of {len(res['rows'])} points: "
               + ", ".join(f"{r['T']:,} x {r['E']} {r['dtype']} {r['method']} ({r['ratio']:.2f}x)" for r in above))
    return "\n".join([
        "### Router selection: BH's count, the router's experts (goal <= 1.5x at every point)", "",
        f"Command: `{command}` ({m['when']}, {m['cpu']}, one torch thread, load average {m['load'][0]:.2f} at the end"
        + (f", commit {m['commit']}" if m.get("commit") else "") + "; torch "
        f"{m['torch']}, numpy {m['numpy']}, numba {m['numba']}). `BH(0.05, selection=\"router\").route` against the "
        "same softmax + top-k router in alternating rounds, median of "
        f"{res['rows'][0]['repeats']} repeats; the count's per-token loop runs compiled by numba "
        "(`bh_routing.core._kernels`)." + (
            " Both routing steps take the router's top-k as `bh_routing.core.strategies.base.router_order` does: "
            f"torch.topk's ids, found from {KEY_SORT_MIN:,} entries on by one numpy sort of 32-bit keys per row (rows with a tie "
            "in the top go to torch.topk), which is faster than torch.topk on the CPU. So a step can cost less than "
            "the model's own router, and `BH / top-k` below 1 is that sort's gain, not a free count: the count's own "
            "cost is `BH / TopK(k) route`, BH's step against the patched top-k's, timed in the same rounds "
            "(ratio of medians)." if both else ""), "",
        table(["T", "E", "dtype", "p-values", "top-k router ms", "BH route ms", "BH / top-k"]
              + (["TopK(k) route ms", "BH / TopK(k) route"] if both else []) + ["BH mean k"], rows), "",
        f"Worst {w['ratio']:.2f}x ({w['T']:,} x {w['E']} {w['dtype']} {w['method']}); {verdict}.",
    ]) + "\n"


def main(argv=None) -> int:
    """``python benchmarks/bench_routing.py --selection router``: the router-selection grid, a table and JSON."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--selection", choices=("router",), default="router")
    ap.add_argument("--quick", action="store_true", help="65,536 x 64 only")
    ap.add_argument("--points", help="comma-separated TxE points, e.g. 1024x64,65536x256 (default: the grid)")
    ap.add_argument("--repeats", type=int, help="timed repeats per point (default 15, 9 with --quick)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--fused", action="store_true", help="the routing function compiled against eager, decode-size blocks")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--splice", type=Path, metavar="MD", help="write the router-selection section into this file (BENCHMARKS.md)")
    args = ap.parse_args(argv)
    points = [tuple(int(v) for v in p.split("x")) for p in args.points.split(",")] if args.points else None
    if args.fused:
        from common import set_device

        if args.device != "cpu" and not torch.cuda.is_available():
            print(f"error: --device {args.device} asked for, but no CUDA device is available", file=sys.stderr)
            return 2
        torch.set_num_threads(1)
        set_device(args.device)
        res = run_fused(print, device=args.device, points=points or FUSED_POINTS, repeats=args.repeats or 15)
        print(fused_table(res))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return 0
    torch.set_num_threads(1)
    res = run_selection(args.quick, print, points=points, repeats=args.repeats)
    res["machine"] = selection_machine()
    text = selection_section(res, "python benchmarks/bench_routing.py --selection router" + (" --quick" if args.quick else "")
                             + (f" --points {args.points}" if args.points else "") + (f" --splice {args.splice}" if args.splice else "")
                             + (f" --json {args.json}" if args.json else ""))
    print(text)
    if args.splice:
        from run import splice

        splice(args.splice, text, SELECTION_START, SELECTION_END)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
