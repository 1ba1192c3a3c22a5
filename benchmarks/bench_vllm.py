"""Tokens per second under vLLM (CPU build) on the embedded model: top-8 against BH, with and
without skipping the unused slots.

    python benchmarks/bench_vllm.py                         # prints the table (markdown)
    python benchmarks/bench_vllm.py --markdown out.md --json out.json
    python benchmarks/bench_vllm.py --agreement             # vLLM vs transformers, float32

One in-process vLLM engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), greedy sampling, prefix
caching off. Two workloads: *prefill* (prompts of the held-out text, one new token each: prompt
tokens per second) and *decode* (short prompts, many new tokens: generated tokens per second).
Variants, timed in rotating rounds against the unpatched engine (vLLM's own top-8 router) as in
benchmarks/common.py (the median of per-round ratios):

- ``TopK(8)`` through bh_routing.vllm.patched (the cost of the strategy router itself);
- ``BH`` with padded slots (``skip_unused=False``: every slot of width 8 computed, pads weight 0);
- ``BH`` skipping unused slots (``skip_unused=True``: only the chosen pairs computed);
- ``TopK(2)``: a fixed small k, for comparison at a similar number of experts.

The numbers are ratios measured side by side on a shared, noisy machine; see the printed machine
line. The embedded model is tiny (hidden 128, 64 experts of intermediate 64), so the MoE share of
the time is small and the routing step comparatively large: the unfavourable case for BH.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

from common import machine, rounds  # noqa: E402


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", help="vLLM dtype (default bfloat16, the model's own)")
    ap.add_argument("--alpha", type=float, default=0.05, help="BH level (empirical null)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prefill-prompts", type=int, default=16)
    ap.add_argument("--prefill-len", type=int, default=256)
    ap.add_argument("--decode-prompts", type=int, default=8)
    ap.add_argument("--decode-new", type=int, default=64)
    ap.add_argument("--compile", action="store_true",
                    help="compiled engines (vLLM's default; CUDA graphs on a GPU), routed by the plugin: one engine "
                         "per variant (top-8 unpatched, TopK(8) and BH via BH_ROUTING_STRATEGY) in this process, "
                         "timed in rotating rounds, beside an eager top-8 and eager BH engine")
    ap.add_argument("--engines", default="",
                    help="with --compile: comma-separated engine names to start (default all; 'top-8 compiled' always)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.15,
                    help="with --compile on a GPU: the share of GPU memory each of the engines may take")
    ap.add_argument("--real-size-layers", type=int, default=0, metavar="N",
                    help="instead of the embedded model: OLMoE-1B-7B's layer sizes (hidden 2048, 64 experts of "
                         "intermediate 1024, top-8) with N layers and random weights (vLLM's dummy loader)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: this process's CPU time (default; the engine runs in this process); wall: elapsed time")
    ap.add_argument("--agreement", action="store_true",
                    help="instead of timing: greedy continuations and log-probabilities of vLLM against "
                         "transformers' patched() on the test prompts (float32), per strategy")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.agreement:
        return agreement()
    if args.compile:
        return compiled(args)
    import torch
    from vllm import LLM, SamplingParams

    import bh_routing.vllm as bv
    from bh_routing import BH, TopK
    from bh_routing.embedded import EMBEDDED_MODEL_DIR, default_eval_text

    torch.set_num_threads(1)
    source, extra = str(EMBEDDED_MODEL_DIR), {}
    if args.real_size_layers:
        source, extra = real_size_folder(args.real_size_layers), {"load_format": "dummy"}
    started = time.perf_counter()
    llm = LLM(
        model=source, dtype=args.dtype, enforce_eager=not args.compile, max_model_len=1024,
        seed=0, enable_prefix_caching=False, max_num_seqs=max(args.prefill_prompts, args.decode_prompts), **extra,
    )
    engine_s = time.perf_counter() - started
    tok = llm.get_tokenizer()
    ids = tok(default_eval_text())["input_ids"]
    n = args.prefill_len
    prefill_prompts = [{"prompt_token_ids": ids[i * n : (i + 1) * n]} for i in range(args.prefill_prompts)]
    decode_prompts = [{"prompt_token_ids": ids[i * 32 + 7 : i * 32 + 39]} for i in range(args.decode_prompts)]
    prefill_params = SamplingParams(temperature=0.0, max_tokens=1)
    decode_params = SamplingParams(temperature=0.0, max_tokens=args.decode_new, ignore_eos=True)
    workloads = {
        "prefill": (prefill_prompts, prefill_params, args.prefill_prompts * n),
        "decode": (decode_prompts, decode_params, args.decode_prompts * args.decode_new),
    }
    variants = {
        "TopK(8) via patched": dict(strategy=TopK(8), skip_unused=True),
        f"BH(α={args.alpha:g}), padded slots": dict(strategy=BH(args.alpha), skip_unused=False),
        f"BH(α={args.alpha:g}), unused slots skipped": dict(strategy=BH(args.alpha), skip_unused=True),
        "TopK(2)": dict(strategy=TopK(2), skip_unused=True),
    }

    results = {"machine": machine(), "vllm": bv.check_vllm(), "dtype": args.dtype, "compile": args.compile,
               "model": "embedded" if not args.real_size_layers else f"real-size x{args.real_size_layers} (random)",
               "clock": args.clock,
               "engine_start_s": engine_s, "workloads": {}}
    for wname, (prompts, params, tokens) in workloads.items():
        def run(prompts=prompts, params=params):
            llm.generate(prompts, params, use_tqdm=False)

        def patched_run(spec, prompts=prompts, params=params):
            with bv.patched(llm, spec["strategy"], skip_unused=spec["skip_unused"]):
                llm.generate(prompts, params, use_tqdm=False)

        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        timed = rounds(run, {v: (lambda s=s: patched_run(s)) for v, s in variants.items()}, repeats=args.repeats,
                       clock=clock)
        base_s = next(iter(timed.values()))["topk_s"]  # median time of the unpatched runs
        rows = {"unpatched (vLLM top-8)": {"tokens_per_s": tokens / base_s,
                                            "ratio_time": 1.0, "mean_k": 8.0, "compute_fraction": 1.0}}
        for v, spec in variants.items():
            with bv.patched(llm, spec["strategy"], skip_unused=spec["skip_unused"]) as rec:
                run()
            rows[v] = {
                "tokens_per_s": tokens / (base_s * timed[v]["ratio"]),  # from the same-round ratio
                "ratio_time": timed[v]["ratio"],
                "mean_k": rec.mean_experts_per_token(),
                "compute_fraction": rec.compute_fraction(),
            }
        results["workloads"][wname] = {"tokens": tokens, "repeats": args.repeats, "rows": rows}

    text = markdown(results, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def compiled(args) -> int:
    """Compiled engines routed by the plugin, against vLLM's own top-8 compiled (see --compile).

    A compiled engine runs the routing it captured at start, so each variant is its own engine,
    routed by the plugin before vLLM compiles (``BH_ROUTING_STRATEGY`` read at each model load).
    Eager engines (``enforce_eager=True``) of top-8 and BH beside them give the eager/compiled ratio.
    """
    import gc

    import torch
    from vllm import LLM, SamplingParams

    import bh_routing.vllm as bv
    from bh_routing.embedded import EMBEDDED_MODEL_DIR, default_eval_text
    from bh_routing.vllm.plugin import ENV_STRATEGY

    torch.set_num_threads(1)
    source, extra = str(EMBEDDED_MODEL_DIR), {}
    if args.real_size_layers:
        source, extra = real_size_folder(args.real_size_layers), {"load_format": "dummy"}
    if torch.cuda.is_available():
        extra["gpu_memory_utilization"] = args.gpu_memory_utilization
    bh = f"bh:alpha={args.alpha:g},pvalues=empirical"
    # the plugin is registered at the first engine's start, only if the variable is set then: BH first
    specs = {f"BH(α={args.alpha:g}) compiled": (bh, False), "TopK(8) via plugin, compiled": ("topk:k=8", False),
             "top-8 compiled": ("", False), "top-8 eager": ("", True), f"BH(α={args.alpha:g}) eager": (bh, True)}
    wanted = {w.strip() for w in args.engines.split(",") if w.strip()}
    unknown = wanted - set(specs)
    if unknown:
        print(f"error: --engines: unknown {sorted(unknown)}; available: {list(specs)}", file=sys.stderr)
        return 2
    if wanted:
        specs = {n: v for n, v in specs.items() if n in wanted or n == "top-8 compiled"}
    engines, starts = {}, {}
    for name, (spec, eager) in specs.items():
        os.environ[ENV_STRATEGY] = spec
        started = time.perf_counter()
        engines[name] = LLM(model=source, dtype=args.dtype, enforce_eager=eager, max_model_len=1024, seed=0,
                            enable_prefix_caching=False, max_num_seqs=args.decode_prompts, **extra)
        starts[name] = time.perf_counter() - started
        print(f"engine {name}: started in {starts[name]:.0f} s", flush=True)
    os.environ.pop(ENV_STRATEGY, None)
    tok = engines["top-8 compiled"].get_tokenizer()
    ids = tok(default_eval_text())["input_ids"]
    prompts = [{"prompt_token_ids": ids[i * 32 + 7 : i * 32 + 39]} for i in range(args.decode_prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=args.decode_new, ignore_eos=True)
    tokens = args.decode_prompts * args.decode_new

    def run(name):
        return lambda: engines[name].generate(prompts, params, use_tqdm=False)

    clock = time.process_time if args.clock == "cpu" and not torch.cuda.is_available() else time.perf_counter
    timed = rounds(run("top-8 compiled"), {n: run(n) for n in engines if n != "top-8 compiled"},
                   repeats=args.repeats, clock=clock)
    base_s = next(iter(timed.values()))["topk_s"]
    rows = {"top-8 compiled": {"tokens_per_s": tokens / base_s, "ratio_time": 1.0, "engine_start_s": starts["top-8 compiled"]}}
    for name in timed:
        rows[name] = {"tokens_per_s": tokens / (base_s * timed[name]["ratio"]), "ratio_time": timed[name]["ratio"],
                      "engine_start_s": starts[name]}
    results = {"machine": machine(), "vllm": bv.check_vllm(), "dtype": args.dtype, "compile": True,
               "model": "embedded" if not args.real_size_layers else f"real-size x{args.real_size_layers} (random)",
               "clock": "wall" if clock is time.perf_counter else "cpu", "decode_prompts": args.decode_prompts,
               "decode_new": args.decode_new, "repeats": args.repeats, "rows": rows}
    lines = [f"vLLM {results['vllm']}, {results['model']}, {args.dtype}, decode: {args.decode_prompts} prompts x "
             f"{args.decode_new} new tokens, {args.repeats} rounds ({results['clock']} clock)", "",
             "| engine | tokens/s | time / top-8 compiled | engine start s |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['tokens_per_s']:.1f} | **{r['ratio_time']:.3f}** | {r['engine_start_s']:.0f} |" for n, r in rows.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    engines.clear()
    gc.collect()
    return 0


def real_size_folder(layers: int) -> str:
    """A model folder with OLMoE-1B-7B-0924's config (``layers`` decoder layers) and the embedded
    model's tokenizer (its ids are a subset of the vocabulary); vLLM's dummy loader fills the weights."""
    import tempfile

    from common import REFERENCE_CONFIG

    from bh_routing.embedded import EMBEDDED_MODEL_DIR

    config = json.loads(REFERENCE_CONFIG.read_text())
    config.pop("_comment", None)
    config.update(num_hidden_layers=layers, architectures=["OlmoeForCausalLM"], dtype="bfloat16")
    folder = Path(tempfile.mkdtemp(prefix="olmoe-real-size-"))
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (folder / name).write_bytes((EMBEDDED_MODEL_DIR / name).read_bytes())
    return str(folder)


PROMPTS = [  # the prompts of tests/serving/test_vllm.py
    "def fibonacci(n):",
    "The Python standard library",
    "import os\nimport sys\n",
    "class Parser:\n    def __init__(self, text):\n",
    "The following functions are available",
    "for key, value in sorted(items):\n",
]


def agreement(max_new: int = 12) -> int:
    """vLLM (float32, eager) under bh_routing.vllm.patched against transformers under
    bh_routing.models.patched: same greedy tokens?, largest log-probability gap of the generated
    tokens, mean experts per token of each."""
    import torch
    from vllm import LLM, SamplingParams

    import bh_routing.vllm as bv
    from bh_routing import BH, TopK, TopP
    from bh_routing.analysis.data import chunk_text
    from bh_routing.analysis.experiments import fit_calibration
    from bh_routing.embedded import EMBEDDED_MODEL_DIR, default_eval_text
    from bh_routing.models import inspect_model, load_model, patched

    torch.set_num_threads(1)
    llm = LLM(model=str(EMBEDDED_MODEL_DIR), dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
              enable_prefix_caching=False, max_num_seqs=8)
    model, tok = load_model(None, device="cpu", dtype=torch.float32)
    seqs = chunk_text(tok, default_eval_text(), seq_len=128, max_sequences=12)  # (12, 128)
    cal = fit_calibration(
        model, seqs, routing=inspect_model(model), null="unrouted", reservoir_size=1024, seed=0, model_name="embedded"
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_new, logprobs=5)

    def vllm_run():
        outs = llm.generate(PROMPTS, params, use_tqdm=False)
        return [(list(o.outputs[0].token_ids), [{t: lp.logprob for t, lp in s.items()} for s in o.outputs[0].logprobs])
                for o in outs]

    def hf_run(strategy):
        outs = []
        with patched(model, strategy) as rec, torch.no_grad():
            for prompt in PROMPTS:
                ids = tok(prompt, return_tensors="pt").input_ids
                g = model.generate(ids, max_new_tokens=max_new, do_sample=False, output_scores=True,
                                   return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
                lp = torch.log_softmax(torch.stack(g.scores, dim=1)[0].float(), dim=-1)  # (steps, V)
                outs.append((g.sequences[0, ids.shape[1]:].tolist(), lp))
        return outs, rec.mean_experts_per_token()

    base = vllm_run()
    print("| strategy | same greedy tokens as transformers | max abs log-prob gap | mean k vLLM | mean k transformers |")
    print("|---|---|---:|---:|---:|")
    strategies = {"TopK(8)": TopK(8), "BH(α=0.05) empirical": BH(0.05),
                  "BH(α=0.1) calibrated": BH(0.1, pvalues="calibrated", calibration=cal), "TopP(0.5)": TopP(0.5)}
    for name, strategy in strategies.items():
        ref, ref_k = hf_run(strategy)
        with bv.patched(llm, strategy) as rec:
            got = vllm_run()
        gap = max(abs(steps[i][t] - lp[i, t].item()) for (ids, steps), (_, lp) in zip(got, ref) for i, t in enumerate(ids))
        same = [ids for ids, _ in got] == [ids for ids, _ in ref]
        print(f"| {name} | {same} | {gap:.1e} | {rec.mean_experts_per_token():.4f} | {ref_k:.4f} |")
        if name == "TopK(8)":
            unpatched_gap = max(abs(a[t] - b[t]) for (_, sa), (_, sb) in zip(got, base) for a, b in zip(sa, sb) for t in a)
            same_u = [ids for ids, _ in got] == [ids for ids, _ in base]
            print(f"| TopK(8) vs vLLM's own router (top-5 log-probs) | {same_u} | {unpatched_gap:.1e} | | |")
    return 0


def markdown(results: dict, args) -> str:
    m = results["machine"]
    lines = [
        f"Model: {results['model']}. vLLM {results['vllm']} (CPU build), {results['dtype']}, "
        f"{'torch.compile' if results['compile'] else 'eager'}; {m['cpu']}, {m['cpus_usable']} usable CPUs, "
        f"{'CPU time of the process' if results['clock'] == 'cpu' else 'wall time'}, "
        f"1 torch thread, load average at start {m['load_average_at_start']}; {m['date_utc']}, commit {m['git_commit']}.",
        f"Command: `python benchmarks/bench_vllm.py --dtype {results['dtype']} --alpha {args.alpha:g} "
        f"--repeats {args.repeats} --clock {results['clock']}{' --compile' if results['compile'] else ''}"
        f"{f' --real-size-layers {args.real_size_layers}' if args.real_size_layers else ''}"
        f"{'' if args.prefill_prompts == 16 else f' --prefill-prompts {args.prefill_prompts}'}"
        f"{'' if args.decode_new == 64 else f' --decode-new {args.decode_new}'}`",
        "Tokens per second: the unpatched engine's median, and for each variant that divided by its median "
        "time ratio to the unpatched run of the same round.",
        "",
    ]
    for wname, w in results["workloads"].items():
        what = "prompt" if wname == "prefill" else "generated"
        lines += [
            f"**{wname}** ({w['tokens']} {what} tokens per run, median of {w['repeats']} rounds)",
            "",
            f"| routing | {what} tokens per {'CPU ' if results['clock'] == 'cpu' else ''}s | time ÷ unpatched | experts per token | pairs computed ÷ top-8 |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in w["rows"].items():
            lines.append(
                f"| {name} | {r['tokens_per_s']:.0f} | {r['ratio_time']:.2f} | {r['mean_k']:.2f} | {r['compute_fraction']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
