"""Decode speed compiled whole: BH against top-8 at the OLMoE-1B-7B layer size, eager and compiled.

    python benchmarks/bench_compiled.py                          # CPU: 2 layers, batch 1 and 16
    python benchmarks/bench_compiled.py --device cuda --layers 16 --batches 1,4,16,64 --mode reduce-overhead
    python benchmarks/bench_compiled.py --tiny --batches 1 --repeats 2   # a dry run in a minute
    python benchmarks/bench_compiled.py --layers 2 --batches 64 --repeats 5 --add-to benchmarks/compiled-cpu.json
                                                                 # one more batch size into a saved run of the same settings

The model: ``OlmoeForCausalLM`` from the real OLMoE-1B-7B config (hidden 2048, 64 experts of
intermediate size 1024, top-8, ``norm_topk_prob=False``) with ``--layers`` layers, vocabulary
scaled with the layers (bench_generation.olmoe_config), random weights (bench_generation.
build_model), bfloat16, ``grouped_mm`` experts. Router inputs shaped so that a few experts stand
out per token (a fixed shift per batch row and layer, drawn once: 1..7 experts raised, as
bench_generation.RouterShaper draws them, but as a tensor the compiled graph reads, not a
generator), so BH finds a variable k.

One decode step = one forward of ``batch`` new tokens at a fixed position of a static cache
(``StaticCache``, prompt of 16 tokens): the shape a compiled decoder runs. Variants: the model
unpatched (its own top-8), ``patched(model, TopK(8))`` (the patch's cost at equal k) and
``patched(model, BH(0.05))``, each eager and compiled (``torch.compile(model, fullgraph=True,
dynamic=False, mode=--mode)``: inductor; on a GPU ``reduce-overhead`` adds CUDA graphs). All
variants of one batch size are timed in rounds, order rotated (``common.rounds``), 20 steps per
round; each ratio is the median over rounds of t(compiled top-8) / t(variant). Clock: this
thread's CPU time on the CPU (one torch thread), wall time with a synchronisation on a GPU.

Ideal gain: a decode step of a memory-bound model reads the distinct experts' weights of the
batch plus everything else once; ``ideal`` = bytes(top-8) / bytes(BH), the distinct experts
counted in the first round (bench_generation.step_bytes). ``share of ideal`` =
(speed-up - 1) / (ideal - 1): the fraction of the possible gain realised (the GPU goal is 70 %).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from common import rounds, set_device, sync, table  # noqa: E402

PROMPT, STEPS = 16, 20


class FixedShaper:
    """Forward pre-hooks adding a fixed (B, H) shift per router: 1..7 experts stand out per row."""

    def __init__(self, model, batch: int, *, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed + batch)
        self.shifts, self.handles = [], []
        for layer in model.model.layers:
            w = layer.mlp.gate.weight.detach().float().cpu()  # (E, H)
            e = w.shape[0]
            m = torch.randint(1, 8, (batch, 1), generator=g)  # (B, 1) experts standing out
            which = torch.rand(batch, e, generator=g).argsort(dim=-1)[:, :7]  # (B, 7)
            s = (3.0 + 3.0 * torch.rand(batch, 7, generator=g)) * (torch.arange(7) < m)  # (B, 7)
            strength = torch.zeros(batch, e).scatter_(1, which, s)  # (B, E)
            shift = (strength @ (w / w.norm(dim=-1, keepdim=True))).to(layer.mlp.gate.weight)  # (B, H)
            self.shifts.append(shift)
            self.handles.append(layer.mlp.gate.register_forward_pre_hook(self._hook(shift)))

    @staticmethod
    def _hook(shift):
        def hook(module, args):
            x = args[0]  # (T, H)
            return (x + shift if x.shape[0] == shift.shape[0] else x, *args[1:])

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class Decoder:
    """One model variant: a static cache filled with the prompt, and a step at a fixed position."""

    def __init__(self, model, batch: int, *, compiled: bool, mode: str | None, device, backend: str = "inductor") -> None:
        from transformers import StaticCache

        g = torch.Generator().manual_seed(batch)
        vocab = model.config.vocab_size
        prompt = torch.randint(vocab, (batch, PROMPT), generator=g).to(device)  # (B, P)
        self.next = torch.randint(vocab, (batch, 1), generator=g).to(device)  # (B, 1)
        self.cache = StaticCache(config=model.config, max_cache_len=PROMPT + 1)
        with torch.no_grad():
            model(prompt, past_key_values=self.cache, use_cache=True)
        self.fn = torch.compile(model, fullgraph=True, dynamic=False, mode=mode, backend=backend) if compiled else model

    def step(self):
        for layer in self.cache.layers:  # back to the prompt: every step writes the same slot
            layer.cumulative_length.fill_(PROMPT)
        with torch.no_grad():
            return self.fn(self.next, past_key_values=self.cache, use_cache=True)

    def timed(self):
        for _ in range(STEPS):
            self.step()
        sync()


def run(*, device: str = "cpu", layers: int = 2, batches=(1, 16), repeats: int = 7, mode: str | None = None,
        tiny: bool = False, backend: str = "inductor", log=print) -> dict:
    from bench_generation import build_model, olmoe_config, step_bytes, weight_bytes

    from bh_routing import BH, TopK
    from bh_routing.models import patched

    device = "cuda:0" if device == "cuda" else device
    model = build_model(olmoe_config(layers=layers, tiny=tiny), device=device, dtype=torch.bfloat16)
    model.set_experts_implementation("grouped_mm")
    wb = weight_bytes(model)
    rows = []
    for batch in batches:
        torch._dynamo.reset()  # each batch size compiles afresh: three graphs, under dynamo's recompile limit (8)
        shaper = FixedShaper(model, batch)
        strategies = {"top-8": None, "top-8 patched": TopK(8), "BH 0.05": BH(0.05)}
        decoders, recorders = {}, {}
        with contextlib.ExitStack() as stack:
            for name, strategy in strategies.items():
                m = model if strategy is None else _copy(model)  # eager and compiled share the weights
                if strategy is not None:
                    recorders[name] = stack.enter_context(patched(m, strategy))
                for compiled in (False, True):
                    start = time.perf_counter()
                    decoders[(name, compiled)] = d = Decoder(m, batch, compiled=compiled, mode=mode, device=device, backend=backend)
                    d.step()  # compiles (and warms up)
                    log(f"batch {batch} {name} {'compiled' if compiled else 'eager'} ready in {time.perf_counter() - start:.0f} s")
            distinct = _distinct(decoders, model, batch, layers)
            clock = time.thread_time if device == "cpu" else time.perf_counter
            base = decoders[("top-8", True)]
            others = {f"{n} {'compiled' if c else 'eager'}": d.timed for (n, c), d in decoders.items() if (n, c) != ("top-8", True)}
            times = rounds(base.timed, others, repeats=repeats, clock=clock)
            mean_k = {name: rec.mean_experts_per_token() for name, rec in recorders.items()}
        shaper.remove()
        top8_bytes = step_bytes(wb, layers=layers, batch=batch, distinct_total=distinct["top-8"], new_tokens=2)
        bh_bytes = step_bytes(wb, layers=layers, batch=batch, distinct_total=distinct["BH 0.05"], new_tokens=2)
        ideal = top8_bytes / bh_bytes
        for (name, compiled) in decoders:
            label = f"{name} {'compiled' if compiled else 'eager'}"
            if (name, compiled) == ("top-8", True):  # the baseline
                seconds, speedup = next(iter(times.values()))["topk_s"], 1.0
            else:
                seconds, speedup = times[label]["bh_s"], 1.0 / times[label]["ratio"]
            row = {
                "batch": batch, "variant": label, "mean_k": mean_k.get(name, 8.0),
                "step_ms": 1e3 * seconds / STEPS, "speedup_vs_compiled_top8": speedup,
                "ideal": ideal if name == "BH 0.05" else None,
                "share_of_ideal": (speedup - 1) / (ideal - 1) if name == "BH 0.05" and compiled and ideal > 1 else None,
                "distinct_per_layer": distinct[name] / layers,
            }
            rows.append(row)
            log(f"batch {batch} {label}: {row['step_ms']:.2f} ms/step, x{speedup:.3f} vs compiled top-8, k {row['mean_k']:.2f}")
    return {"device": device, "layers": layers, "mode": mode, "backend": backend, "repeats": repeats, "steps": STEPS,
            "tiny": tiny, "rows": rows}


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _distinct(decoders, model, batch: int, layers: int) -> dict:
    """Distinct experts summed over layers at one eager step of top-8 and of BH (router forward hooks)."""
    out = {}
    for name in ("top-8", "top-8 patched", "BH 0.05"):
        seen = []
        hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, o: seen.append(o[2])) for layer in decoders[(name, False)].fn.model.layers]
        decoders[(name, False)].step()
        for h in hooks:
            h.remove()
        e = model.config.num_experts
        out[name] = float(sum(int(ix[ix < e].unique().numel()) for ix in seen[-layers:]))
    return out


MIN_IDEAL = 1.05  # below this the bytes barely differ (every expert read by both): no share of that gain is given


def _share(r: dict) -> str:
    if r["share_of_ideal"] is None or r["ideal"] < MIN_IDEAL:
        return "-"
    return f"{100 * r['share_of_ideal']:.0f} %"


def results_table(res: dict) -> str:
    rows = [
        [r["batch"], r["variant"], f"{r['mean_k']:.2f}", f"{r['step_ms']:.2f}", f"**{r['speedup_vs_compiled_top8']:.3f}x**",
         "-" if r["ideal"] is None else f"{r['ideal']:.2f}x", _share(r)]
        for r in res["rows"]
    ]
    return table(["batch", "variant", "mean k", "ms / step", "speed-up vs compiled top-8", "ideal (bytes)", "share of ideal"], rows) + "\n"


SECTION_START, SECTION_END = "<!-- compiled:start -->", "<!-- compiled:end -->"


def section(res: dict, command: str) -> str:
    """The BENCHMARKS.md section of a run (spliced between SECTION_START and SECTION_END)."""
    where = "CPU, one torch thread, thread CPU time" if res["device"] == "cpu" else f"{res['device']}, wall time"
    rows = {(r["batch"], r["variant"]): r for r in res["rows"]}
    lines = [
        "## 8. Decode compiled whole (the static patch path)", "",
        f"Command: `{command}` ({where}; {res['layers']} {'tiny' if res.get('tiny') else 'real-size'} layers, "
        "bfloat16, grouped_mm, "
        f"{res['repeats']} rounds of {res['steps']} decode steps, compile mode {res['mode'] or 'default'}). "
        "The patched model is captured in one graph (`fullgraph=True`); see benchmarks/bench_compiled.py for the "
        "model, the router inputs and the ideal gain.", "",
    ]
    for batch in sorted({r["batch"] for r in res["rows"]}):
        bh, top8 = rows[(batch, "BH 0.05 compiled")], rows[(batch, "top-8 patched compiled")]
        ideal = "" if bh["ideal"] is None else f", ideal {bh['ideal']:.2f}x from the bytes read"
        share = "" if bh["share_of_ideal"] is None else f", {100 * bh['share_of_ideal']:.0f} % of the ideal gain"
        if bh["ideal"] is not None and bh["ideal"] < MIN_IDEAL:
            top = rows[(batch, "top-8 compiled")]
            share = (f": the batch reads {bh['distinct_per_layer']:.1f} experts per layer under BH and "
                     f"{top['distinct_per_layer']:.1f} under top-8, so the gain is compute (fewer token-expert pairs), "
                     "which the bytes model does not count, and no share of it is given")
        lines.append(
            f"- batch {batch}: BH(0.05) compiled decodes at **{bh['speedup_vs_compiled_top8']:.3f}x** compiled top-8 "
            f"(k = {bh['mean_k']:.2f}{ideal}{share}); the patch at equal k "
            f"compiled costs {100 * (1 / top8['speedup_vs_compiled_top8'] - 1):+.1f} %."
        )
    return "\n".join(lines) + "\n\n" + results_table(res)


def _cannot_add(path: Path, args, batches) -> str | None:
    """Why this run's rows cannot join the saved run at ``path`` (None if they can)."""
    if not path.is_file():
        return "no such file"
    try:
        saved = json.loads(path.read_text())
        have = {r["batch"] for r in saved["rows"]}
        mine = {"device": args.device, "layers": args.layers, "mode": args.mode, "backend": args.backend,
                "repeats": args.repeats, "steps": STEPS, "tiny": args.tiny}
    except (ValueError, KeyError, TypeError) as e:
        return f"not a saved run of this benchmark ({type(e).__name__})"
    differ = [f"{k} {saved.get(k)!r} there, {v!r} here" for k, v in mine.items() if saved.get(k) != v]
    if differ:
        return "other settings: " + "; ".join(differ)
    again = sorted(have & set(batches))
    return f"batch {', '.join(map(str, again))} is already there" if again else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--mode", default=None, help="torch.compile mode (reduce-overhead: CUDA graphs on a GPU)")
    ap.add_argument("--tiny", action="store_true", help="tiny hidden sizes (a dry run)")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: capture only, for a dry run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--add-to", type=Path, metavar="JSON",
                    help="add this run's batch sizes to a saved run of the same settings and write it back")
    ap.add_argument("--render", type=Path, metavar="JSON", help="only render a saved run (with --splice)")
    ap.add_argument("--splice", type=Path, metavar="MD", help="write the section into this file (BENCHMARKS.md)")
    ap.add_argument("--command", default="", help="with --render: the command that made the run")
    args = ap.parse_args(argv)
    if args.render:
        if not args.render.is_file():
            print(f"error: --render {args.render}: no such file", file=sys.stderr)
            return 2
        text = section(json.loads(args.render.read_text()), args.command or "python benchmarks/bench_compiled.py")
        if args.splice:
            from run import splice

            splice(args.splice, text, SECTION_START, SECTION_END)
        print(text)
        return 0
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        print(f"error: --batches must be comma-separated integers, got {args.batches!r}", file=sys.stderr)
        return 2
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"error: --device {args.device} asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    if min(batches) < 1 or args.layers < 1 or args.repeats < 1:
        print("error: --batches, --layers and --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.add_to:
        problem = _cannot_add(args.add_to, args, batches)
        if problem:
            print(f"error: --add-to {args.add_to}: {problem}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    set_device(args.device)
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    res = run(device=args.device, layers=args.layers, batches=batches, repeats=args.repeats, mode=args.mode, tiny=args.tiny,
              backend=args.backend)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.add_to:
        saved = json.loads(args.add_to.read_text())
        saved["rows"] = sorted(saved["rows"] + res["rows"], key=lambda r: r["batch"])  # stable: variants keep their order
        args.add_to.write_text(json.dumps(saved, indent=1))
    print()
    print(results_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
