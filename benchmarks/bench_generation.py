"""Generation speed at the OLMoE-1B-7B size: tokens/s of `model.generate` under BH, and the batch effect.

The model: an ``OlmoeForCausalLM`` built from the real OLMoE-1B-7B config
(benchmarks/olmoe-1b-7b-0924.config.json, a copy of the reference architecture: hidden 2048, 64
experts of intermediate size 1024, top-8, norm_topk_prob=False, 16 attention heads without
grouped KV), random weights (uniform with std 0.02, norms 1, seed 0) in bfloat16. On a GPU all 16
layers and the full vocabulary of 50,304. On the CPU only as many layers as the shared machine
holds (see the section text for the number used and why), with the vocabulary cut in the same
proportion as the layers (50,304 x layers / 16) so that the output layer keeps its real share of
the bytes read per token.

Router inputs shaped as in section 2: a forward pre-hook on every router adds, to each token's
router input, ``sum_j s_j w_j / |w_j|`` for ``m_t`` experts drawn at random (``m_t`` uniform on
1..7, ``s_j`` uniform on [3, 6]; ``w_j`` the router rows), so that a few experts stand out per
token and BH finds a variable k; only the router sees the shift (the experts get the model's own
hidden state), and the hook runs, from a generator reset before every `generate`, in every
variant alike - unpatched ones included - so all variants draw the same shifts.

Timing. `model.generate(prompt, max_new_tokens=N)`, greedy, KV cache on, a fixed number of new
tokens (no EOS), random prompts of 16 tokens, for: the model's own top-8 unpatched (the
baseline), `patched(model, TopK(8))` (the cost of the patch itself), `TopK(4)`, and `BH(alpha)`
at two alpha. A logits processor stamps the time after each step's forward (after a device
synchronisation on a GPU); **decode time** is from the first stamp (the prompt's forward done) to
the last, i.e. N - 1 decode steps, and decode tokens/s = batch x (N - 1) / decode time. All
variants of one (backend, batch size) are timed in rounds, the order rotated from round to round
(round 0 is a warm-up that also counts experts); each variant's speed-up is the median over rounds
of t(top-8 unpatched) / t(variant) of the same round. **Which clock**: on a GPU, wall time. On the
CPU (one torch thread, so all of torch's work runs in the calling thread) the speed-ups and the
time / limit use the **CPU time of that thread** (`time.thread_time`), which counts only the time
the benchmark actually ran: on a machine shared by many jobs the wall time mostly measures the
waiting for a core. Both are in the JSON (`speedup_wall`, `speedup_cpu`) and in the table.

The patch's own overhead (a goal row) gets, on the CPU, a dedicated measurement: unpatched top-8
against `patched(model, TopK(8))` alone at batch 1, 15 rounds of 10 new tokens per backend; the
value is the median of the per-round t(patched) / t(top-8) - 1 with a distribution-free 95 %
interval (sign-test order statistics). On a GPU the batch-1 rows of the grid serve.

Experts counted (round 0, forward hooks on the routers, decode steps only): mean k, and the
number of **distinct** experts per layer per decode step - the union over the batch, the experts
whose weights a decode step must read.

Memory-traffic limit. The bytes a decode step must read at least: the distinct experts' weights
(3 x hidden x intermediate each), every other weight once (attention, norms, routers, the output
layer; of the embedding only the batch's rows) and the KV cache (2 x batch x context x hidden per
layer, at the mean context of the decode steps). Divided by the read bandwidth measured in the
same run (the sum of a large float32 tensor, best of 5, the same torch threads and clock) it gives the
fastest possible step; **time / limit** says how far a variant is from it. The **ideal speed-up**
of a variant is bytes(top-8) / bytes(variant) at the same batch size: what decode would gain if it
were purely memory-bound, non-expert bytes included.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
import transformers

from bh_routing import BH, TopK
from bh_routing.models import patched

from bench_moe import TINY
from common import REFERENCE_CONFIG, docstring, failed, gpu_run, prose, table, yes

PROMPT_LEN = 16
ALPHAS = (0.05, 0.2)
HEADLINE_ALPHA = 0.05
BASELINE = "top-8"


def olmoe_config(*, layers: int, vocab: int | None = None, tiny: bool = False) -> transformers.OlmoeConfig:
    """The real OLMoE-1B-7B config with ``layers`` layers; vocabulary scaled with the layers unless given."""
    raw = {k: v for k, v in json.loads(REFERENCE_CONFIG.read_text()).items() if not k.startswith("_")}
    full_layers, full_vocab = raw["num_hidden_layers"], raw["vocab_size"]
    if vocab is None:
        vocab = full_vocab if layers >= full_layers else math.ceil(full_vocab * layers / full_layers / 64) * 64
    raw.update(num_hidden_layers=layers, vocab_size=vocab)
    if tiny:
        raw.update(TINY)
    if raw["eos_token_id"] >= vocab:
        raw["eos_token_id"] = None
    if raw["pad_token_id"] >= vocab:
        raw["pad_token_id"] = 0
    return transformers.OlmoeConfig(**raw)


def build_model(config, *, device: str = "cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """OlmoeForCausalLM with random weights made directly in ``dtype`` on ``device`` (no float32 copy)."""
    no_init = getattr(getattr(transformers, "initialization", None), "no_init_weights", contextlib.nullcontext)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init(), torch.device(device):
            model = transformers.OlmoeForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(before)
    g = torch.Generator(device=device).manual_seed(seed)
    bound = 0.02 * math.sqrt(3)  # uniform on [-b, b] has std b / sqrt(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # RMSNorm scales
            else:
                p.uniform_(-bound, bound, generator=g)
    return model


class RouterShaper:
    """Forward pre-hooks that shift every router's input so 1..7 experts per token stand out (see notes)."""

    def __init__(self, model, *, seed: int = 1) -> None:
        routers = [layer.mlp.gate for layer in model.model.layers]
        w = routers[0].weight
        self.seed = seed
        self.generator = torch.Generator(device=w.device)
        self.directions = [r.weight.detach().float() / r.weight.detach().float().norm(dim=-1, keepdim=True) for r in routers]  # (E, H) each
        self.handles = [r.register_forward_pre_hook(self._hook(i)) for i, r in enumerate(routers)]
        self.reset()

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def _hook(self, layer: int):
        def hook(module, args):
            x = args[0]  # (T, H)
            t, dev, g = x.shape[0], x.device, self.generator
            num_experts = self.directions[layer].shape[0]
            m = torch.randint(1, 8, (t, 1), generator=g, device=dev)  # (T, 1) experts standing out
            which = torch.rand(t, num_experts, generator=g, device=dev).argsort(dim=-1)[:, :7]  # (T, 7)
            s = (3.0 + 3.0 * torch.rand(t, 7, generator=g, device=dev)) * (torch.arange(7, device=dev) < m)  # (T, 7)
            strength = torch.zeros(t, num_experts, device=dev).scatter_(1, which, s)  # (T, E)
            return (x + (strength @ self.directions[layer]).to(x.dtype), *args[1:])  # (T, H)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class StepClock(transformers.LogitsProcessor):
    """Stamps the time after every generation step's forward (synchronising the device first)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []  # wall clock
        self.cpu_stamps: list[float] = []  # CPU time of this thread (all of torch's work with 1 thread)

    def __call__(self, input_ids, scores):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.thread_time())
        return scores


class ExpertCounter:
    """Forward hooks on the routers: per decode call (T == batch), distinct experts and chosen pairs."""

    def __init__(self, model, batch: int) -> None:
        self.batch = batch
        self.num_experts = model.config.num_experts
        routers = [layer.mlp.gate for layer in model.model.layers]
        self.distinct: list[list[int]] = [[] for _ in routers]
        self.pairs: list[list[int]] = [[] for _ in routers]
        self.handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(routers)]

    def _hook(self, layer: int):
        def hook(module, args, out):
            indices = out[2]  # (T, W), sentinel E in unused slots
            if indices.shape[0] != self.batch:
                return  # the prompt's forward
            real = indices[indices < self.num_experts]  # (pairs,)
            self.distinct[layer].append(int(real.unique().numel()))
            self.pairs[layer].append(int(real.numel()))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def summary(self) -> dict:
        steps = len(self.distinct[0])
        per_step = [sum(d[i] for d in self.distinct) for i in range(steps)]  # distinct experts summed over layers
        return {
            "mean_k": sum(map(sum, self.pairs)) / (self.batch * steps * len(self.pairs)),
            "distinct_per_layer": statistics.mean(per_step) / len(self.distinct),
            "distinct_experts_per_step": statistics.mean(per_step),  # over all layers
            "decode_steps_counted": steps,
        }


def strategies(quick: bool) -> dict:
    """name -> strategy (None: the model unpatched)."""
    out = {BASELINE: None, "top-8 patched": TopK(8)}
    if not quick:
        out["top-4"] = TopK(4)
    for a in ALPHAS if not quick else (HEADLINE_ALPHA,):
        out[f"BH {a}"] = BH(a)
    return out


def weight_bytes(model) -> dict:
    """Bytes of the experts' weights per expert and layer, and of every other weight but the embedding."""
    experts = [layer.mlp.experts for layer in model.model.layers]
    expert_total = sum(p.numel() * p.element_size() for e in experts for p in e.parameters())
    embed = model.model.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    return {
        "per_expert": expert_total // (len(experts) * cfg.num_experts),  # 3 x hidden x intermediate x itemsize
        "non_expert": total - expert_total - embed.numel() * embed.element_size(),
        "embedding_row": embed.shape[1] * embed.element_size(),
        "kv_per_token_layer": 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * embed.element_size(),
    }


def step_bytes(wb: dict, *, layers: int, batch: int, distinct_total: float, new_tokens: int) -> float:
    """Bytes a decode step must read (see notes): distinct experts + other weights + embedding rows + KV cache."""
    context = PROMPT_LEN + new_tokens / 2  # mean context over the decode steps
    kv = layers * batch * context * wb["kv_per_token_layer"]
    return distinct_total * wb["per_expert"] + wb["non_expert"] + batch * wb["embedding_row"] + kv


def read_bandwidth(device: torch.device, *, mib: int) -> float:
    """Bytes/s of reading a float32 tensor (``sum``), best of 5; on the CPU by this thread's CPU time."""
    x = torch.ones(mib * 2**20 // 4, device=device)
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    best = math.inf
    for _ in range(6):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        x.sum().item()
        best = min(best, clock() - start)
    return x.numel() * 4 / best


def _generate(model, prompt, new_tokens: int, clock: StepClock):
    return model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        logits_processor=transformers.LogitsProcessorList([clock]),
        pad_token_id=0,
    )


def time_batch(model, shaper: RouterShaper, strats: dict, *, batch: int, new_tokens: int, repeats: int, seed: int = 2) -> dict:
    """Rounds over the variants at one batch size; returns per variant timings and expert counts."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed + batch)
    prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT_LEN), generator=g).to(device)  # (B, S)
    names = list(strats)
    decode: dict[str, list[float]] = {n: [] for n in names}
    decode_cpu: dict[str, list[float]] = {n: [] for n in names}
    total: dict[str, list[float]] = {n: [] for n in names}
    counts: dict[str, dict] = {}
    for r in range(repeats + 1):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            counter = ExpertCounter(model, batch) if r == 0 else None
            clock = StepClock(device)
            shaper.reset()
            with contextlib.ExitStack() as stack:
                if strats[name] is not None:
                    stack.enter_context(patched(model, strats[name], "patch"))
                start = time.perf_counter()
                out = _generate(model, prompt, new_tokens, clock)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - start
            if out.shape[1] != PROMPT_LEN + new_tokens or len(clock.stamps) != new_tokens:
                raise RuntimeError(f"{name}: generated {out.shape[1] - PROMPT_LEN} tokens, expected {new_tokens}")
            if counter is not None:
                counter.remove()
                counts[name] = counter.summary()
            else:
                decode[name].append(clock.stamps[-1] - clock.stamps[0])
                decode_cpu[name].append(clock.cpu_stamps[-1] - clock.cpu_stamps[0])
                total[name].append(elapsed)
    rows = {}
    for name in names:
        med = statistics.median(decode[name])
        rows[name] = {
            **counts[name],
            "decode_s": med,
            "decode_cpu_s": statistics.median(decode_cpu[name]),
            "generate_s": statistics.median(total[name]),
            "decode_tok_s": batch * (new_tokens - 1) / med,
            "generate_tok_s": batch * new_tokens / statistics.median(total[name]),
            "speedup_wall": _ratio(decode[BASELINE], decode[name]),
            "speedup_cpu": _ratio(decode_cpu[BASELINE], decode_cpu[name]),
            "rounds_wall": [b / t for b, t in zip(decode[BASELINE], decode[name])],
            "rounds_cpu": [b / t for b, t in zip(decode_cpu[BASELINE], decode_cpu[name])],
            "repeats": repeats,
        }
    return rows


def median_ci(values: list[float], *, level: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval for the median: order statistics x_(j), x_(n-j+1) with
    j from the binomial(n, 1/2) quantile (the sign-test interval; coverage >= level up to discreteness)."""
    from scipy.stats import binom

    xs = sorted(values)
    n = len(xs)
    j = int(binom.ppf((1 - level) / 2, n, 0.5))  # 1-based rank of the lower bound
    if j < 1:
        return (xs[0], xs[-1])
    return (xs[j - 1], xs[n - j])


def patch_overhead(model, shaper: RouterShaper, *, rounds: int, new_tokens: int, clock: str) -> dict:
    """Patched TopK(8) against the model unpatched, batch 1, in ``rounds`` ABBA pairs (a dedicated,
    longer measurement of the goal row: the per-round ratio's median and its 95 % interval)."""
    strats = {BASELINE: None, "top-8 patched": TopK(8)}
    res = time_batch(model, shaper, strats, batch=1, new_tokens=new_tokens, repeats=rounds)
    ratios = [1.0 / x - 1.0 for x in res["top-8 patched"][f"rounds_{clock}"]]  # t(patched) / t(top-8) - 1
    lo, hi = median_ci(ratios)
    return {"overhead": statistics.median(ratios), "ci95": [lo, hi], "rounds": rounds, "new_tokens": new_tokens,
            "clock": clock, "per_round": ratios}


def _ratio(base: list[float], other: list[float]) -> float:
    """Median over rounds of t(baseline) / t(other), each pair from the same round."""
    return statistics.median(b / t for b, t in zip(base, other))


def default_layers(device: str) -> int:
    """All 16 layers on a GPU; 2 on the CPU (see the section text: memory and time on a shared machine)."""
    return 16 if device.startswith("cuda") else 2


def schedule(quick: bool, *, gpu: bool = False) -> dict[int, tuple[int, int]]:
    """batch size -> (new tokens, timed rounds): more rounds where a step is short and noise large
    (fewer on a GPU, which is not shared and where gpu_check.sh must finish in 5 minutes)."""
    if quick:
        return {1: (8, 5), 16: (4, 2)}
    if gpu:
        return {1: (12, 3), 4: (8, 2), 16: (8, 2), 64: (6, 2)}
    return {1: (12, 7), 4: (12, 4), 16: (6, 3), 64: (4, 2)}


def run(
    quick: bool,
    log,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    layers: int | None = None,
    tiny: bool = False,
    plan: dict[int, tuple[int, int]] | None = None,
    backends: tuple[str, ...] | None = None,
) -> dict:
    """Every variant at every batch size of ``plan`` (batch -> (new tokens, rounds)) and backend."""
    dev = torch.device(device)
    layers = layers or default_layers(device)
    plan = plan or schedule(quick, gpu=dev.type == "cuda")
    batches = tuple(plan)
    backends = backends or (("grouped_mm",) if quick else ("eager", "grouped_mm"))
    strats = strategies(quick)
    start = time.perf_counter()
    config = olmoe_config(layers=layers, tiny=tiny)
    model = build_model(config, device=device, dtype=dtype)
    shaper = RouterShaper(model)
    wb = weight_bytes(model)
    bw_mib = 2048 if dev.type == "cuda" else (16 if tiny else 256)
    bandwidth = [read_bandwidth(dev, mib=bw_mib)]
    log(
        f"generation: {layers} layers, vocab {config.vocab_size}, {str(dtype).replace('torch.', '')} on {device}, "
        f"built in {time.perf_counter() - start:.1f} s; read bandwidth {bandwidth[0] / 1e9:.1f} GB/s"
    )
    clock = "wall" if dev.type == "cuda" else "cpu"  # see the notes: on a CPU, this thread's CPU time
    rows = []
    for backend in backends:
        model.set_experts_implementation(backend)
        for batch in batches:
            load_before = [round(x, 2) for x in os.getloadavg()]
            with torch.inference_mode():
                new_tokens, repeats = plan[batch]
                res = time_batch(model, shaper, strats, batch=batch, new_tokens=new_tokens, repeats=repeats)
            load_after = [round(x, 2) for x in os.getloadavg()]
            for name, x in res.items():
                x["speedup"] = x[f"speedup_{clock}"]
                x.update(backend=backend, batch=batch, strategy=name, new_tokens=new_tokens, load_before=load_before, load_after=load_after)
                rows.append(x)
            log(
                f"generation {backend} batch {batch}: "
                + ", ".join(f"{n} {x['decode_tok_s']:.1f} tok/s (x{x['speedup']:.2f}, k {x['mean_k']:.2f}, "
                            f"distinct {x['distinct_per_layer']:.1f})" for n, x in res.items())
                + f"; load {load_before[0]} -> {load_after[0]}"
            )
    overheads = {}
    if dev.type != "cuda":  # the shared CPU is noisy: the goal row gets its own, longer measurement
        for backend in backends:
            model.set_experts_implementation(backend)
            with torch.inference_mode():
                overheads[backend] = patch_overhead(model, shaper, rounds=7 if quick else 15, new_tokens=10, clock=clock)
            x = overheads[backend]
            log(f"generation {backend} patch overhead, batch 1, {x['rounds']} rounds: {x['overhead']:+.3f} "
                f"(95% CI {x['ci95'][0]:+.3f} to {x['ci95'][1]:+.3f})")
    bandwidth.append(read_bandwidth(dev, mib=bw_mib))
    best_bw = max(bandwidth)
    for x in rows:
        x["step_bytes"] = step_bytes(wb, layers=layers, batch=x["batch"], distinct_total=x["distinct_experts_per_step"], new_tokens=x["new_tokens"])
        x["expert_bytes"] = x["distinct_experts_per_step"] * wb["per_expert"]
        x["limit_s"] = x["step_bytes"] / best_bw
        x["step_s"] = x["decode_s"] / (x["new_tokens"] - 1)
        x["step_cpu_s"] = x["decode_cpu_s"] / (x["new_tokens"] - 1)
        x["time_over_limit"] = x[{"wall": "step_s", "cpu": "step_cpu_s"}[clock]] / x["limit_s"]
    for x in rows:
        base = next(b for b in rows if (b["backend"], b["batch"], b["strategy"]) == (x["backend"], x["batch"], BASELINE))
        x["ideal_speedup"] = base["step_bytes"] / x["step_bytes"]
    del model, shaper
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "layers": layers,
        "vocab": config.vocab_size,
        "hidden": config.hidden_size,
        "tiny": tiny,
        "device": device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
        "dtype": str(dtype).replace("torch.", ""),
        "prompt_len": PROMPT_LEN,
        "plan": {str(b): list(v) for b, v in plan.items()},
        "batches": list(batches),
        "backends": list(backends),
        "clock": clock,
        "weight_bytes": wb,
        "read_bandwidth_bytes_s": bandwidth,
        "rows": rows,
        "patch_overhead": overheads,
        "headline": headline(rows, backend="grouped_mm" if "grouped_mm" in backends else backends[0], overheads=overheads),
    }


def _row(rows, backend, batch, strategy):
    return next((x for x in rows if (x["backend"], x["batch"], x["strategy"]) == (backend, batch, strategy)), None)


def headline(rows: list[dict], *, backend: str, overheads: dict | None = None) -> dict:
    """The quick keys and the goal rows (see BENCHMARKS.md, section 6, for the definitions).

    ``overheads``: per backend, the dedicated patch-overhead measurement (:func:`patch_overhead`);
    where given it is the goal row's value, else the batch-1 row of the grid."""
    bh = f"BH {HEADLINE_ALPHA}"
    out = {"headline_backend": backend}
    b1, p1 = _row(rows, backend, 1, bh), _row(rows, backend, 1, "top-8 patched")
    if b1 is not None:
        out["decode_speedup_bh_batch1"] = b1["speedup"]
        out["decode_bh_mean_k"] = b1["mean_k"]
        out["decode_ideal_speedup_bh_batch1"] = b1["ideal_speedup"]
        out["decode_speedup_share_of_ideal"] = b1["speedup"] / b1["ideal_speedup"]
        gain = b1["ideal_speedup"] - 1.0
        out["decode_gain_share_of_ideal"] = (b1["speedup"] - 1.0) / gain if gain > 0 else math.nan
    if overheads:
        out["patch_overhead_decode"] = overheads[backend]["overhead"]
        out["patch_overhead_decode_ci95"] = overheads[backend]["ci95"]
        out["patch_overhead_decode_worst_backend"] = max(x["overhead"] for x in overheads.values())
        out["patch_overhead_source"] = "dedicated"
    elif p1 is not None:
        out["patch_overhead_decode"] = 1.0 / p1["speedup"] - 1.0
        grid = [1.0 / x["speedup"] - 1.0 for x in rows if x["strategy"] == "top-8 patched" and x["batch"] == 1]
        out["patch_overhead_decode_worst_backend"] = max(grid)
        out["patch_overhead_source"] = "grid"
    b16 = _row(rows, backend, 16, bh)
    if b16 is not None:
        out["decode_speedup_bh_batch16"] = b16["speedup"]
    return out


def figure(res: dict, path: Path) -> None:
    """Decode tokens/s against batch size (top row) and speed-up over top-8 with the ideal (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends, rows = res["backends"], res["rows"]
    names = list(dict.fromkeys(x["strategy"] for x in rows))
    colors = dict(zip(names, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(2, len(backends), figsize=(5.2 * len(backends), 7.6), squeeze=False, sharex=True)
    for j, backend in enumerate(backends):
        top, bottom = axes[0][j], axes[1][j]
        for name in names:
            pts = sorted((x["batch"], x) for x in rows if x["backend"] == backend and x["strategy"] == name)
            bs = [b for b, _ in pts]
            style = dict(color=colors[name], marker="o", lw=1.6, ls="--" if name == "top-8 patched" else "-")
            top.plot(bs, [x["decode_tok_s"] for _, x in pts], label=name, **style)
            if name != BASELINE:
                bottom.plot(bs, [x["speedup"] for _, x in pts], **style)
                if name.startswith("BH") or name == "top-4":
                    bottom.plot(bs, [x["ideal_speedup"] for _, x in pts], color=colors[name], ls=":", lw=1.2)
        bottom.axhline(1.0, color="0.5", lw=0.8)
        top.set_title(f"{backend}: decode tokens/s")
        bottom.set_title(f"{backend}: decode speed-up over top-8")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(res["batches"], [str(b) for b in res["batches"]])
            ax.grid(alpha=0.3)
        top.set_yscale("log")
        top.set_ylabel("tokens/s, wall clock (batch x steps / time)")
        clock = {"cpu": "CPU time", "wall": "wall clock"}[res.get("clock", "wall")]
        bottom.set_ylabel(f"t(top-8) / t(variant), {clock}, median")
        bottom.set_xlabel("batch size")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(matplotlib.lines.Line2D([], [], color="0.3", ls=":", lw=1.2))
    labels.append("ideal speed-up from bytes read (bottom row)")
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    size = "tiny sizes (dry run)" if res["tiny"] else "OLMoE-1B-7B size"
    fig.suptitle(
        f"Generation speed, {size}: {res['layers']} layers, {res['dtype']}, {res['device_name']}\n"
        "random weights, router inputs shaped; decode only (prompt's forward excluded)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- section 6 of BENCHMARKS.md, its goals and their reasons, and its paragraph of docs/scaling.md


def section(r: dict) -> str:
    """Section 6: generation speed (self-contained: command, date, load, goals, table, verdict)."""
    res = r["generation"]
    gpu = gpu_run(r)
    s = ["## 6. Generation speed at the OLMoE-1B-7B size, and the batch-size effect\n"]
    if "error" in res:
        return "\n".join(s + [failed("generation", res)])
    m = r["machine"]
    s += [docstring(__doc__), ""]
    wb = res["weight_bytes"]
    base1 = next(x for x in res["rows"] if x["batch"] == 1 and x["strategy"] == BASELINE)
    top8_expert = base1["expert_bytes"]
    non_expert = base1["step_bytes"] - top8_expert
    where = res["device_name"]
    s.append(
        f"This run: `{r['command']}` on {m['date_utc']}, {where}, {res['layers']} layers, vocabulary "
        f"{res['vocab']:,}, {res['dtype']}; batch size -> (new tokens, timed rounds): "
        + ", ".join(f"{b} -> ({v[0]}, {v[1]})" for b, v in res["plan"].items())
        + f". Read bandwidth {max(res['read_bandwidth_bytes_s']) / 1e9:.1f} GB/s (best of the measurements at the "
        f"start and end: {', '.join(f'{b / 1e9:.1f}' for b in res['read_bandwidth_bytes_s'])} GB/s). "
        f"Bytes per decode step at batch 1 with top-8: experts {top8_expert / 1e6:.0f} MB (one expert "
        f"{wb['per_expert'] / 1e6:.1f} MB), everything else {non_expert / 1e6:.0f} MB "
        f"({non_expert / base1['step_bytes']:.0%} of the step).\n"
    )
    if r.get("rendered_by") and not gpu:
        s.append(f"Rendered from that run's saved results by `{r['rendered_by']}` (same numbers).\n")
    if not gpu and not res.get("tiny"):
        lo, hi = _load_range(res["rows"])
        s.append(
            f"**The machine was loaded.** It has {m['cpus_usable']} vCPUs shared with other agents' jobs; the "
            f"1-minute load average ranged from {lo:.2f} to {hi:.2f} during this section (per row in the JSON). "
            f"Absolute tokens/s are therefore low and noisy; the speed-ups are medians of ratios timed in the "
            f"same rounds, which the load affects far less. Why {res['layers']} layers: each layer holds "
            f"{64 * wb['per_expert'] / 2**30:.2f} GiB of expert weights in bfloat16 and the machine's "
            f"{_mem_gib():.0f} GiB are shared by 8 concurrent jobs; and every layer adds about "
            f"{base1['step_s'] / res['layers'] * 1e3:.0f} ms of wall time ({base1['step_cpu_s'] / res['layers'] * 1e3:.0f} ms "
            "of CPU time) to a step here, so 16 layers would make the grid 8 times "
            "longer without changing a ratio (the vocabulary cut in proportion keeps the non-expert share of the "
            "bytes at the real model's). The GPU run (`benchmarks/gpu_check.sh`) uses all 16 layers.\n"
        )
    if gpu:
        s.append(prose("generation-gpu") + "\n")
    goals = goal_rows(r)
    if goals:
        s.append("Goals (from this run):\n")
        s.append(table(["figure", "value", "goal", "met"], goals) + "\n")
        s.append(prose("generation-ideal") + "\n")
    cpu_clock = res.get("clock") == "cpu"
    header = ["backend", "batch", "variant", "mean k", "distinct experts / layer / step", "expert MB / step",
              "decode tok/s (wall)", "speed-up vs top-8" + (" (CPU time)" if cpu_clock else ""),
              "ideal speed-up"] + (["speed-up (wall)", "step CPU ms"] if cpu_clock else []) + [
              "step ms (wall)", "limit ms", "time / limit"]
    rows = [
        [
            x["backend"],
            x["batch"],
            x["strategy"],
            f"{x['mean_k']:.2f}",
            f"{x['distinct_per_layer']:.1f}",
            f"{x['expert_bytes'] / 1e6:.0f}",
            f"{x['decode_tok_s']:.1f}",
            f"**{x['speedup']:.2f}x**" if x["strategy"] != BASELINE else "1",
            f"{x['ideal_speedup']:.2f}x",
            *([f"{x['speedup_wall']:.2f}x", f"{x['step_cpu_s'] * 1e3:.1f}"] if cpu_clock else []),
            f"{x['step_s'] * 1e3:.1f}",
            f"{x['limit_s'] * 1e3:.2f}",
            f"{x['time_over_limit']:.1f}",
        ]
        for x in res["rows"]
    ]
    s.append(table(header, rows))
    if res.get("figure"):
        s.append(f"\n![generation speed]({res['figure']})\n")
    s.append(_verdict(res))
    return "\n".join(s) + "\n"


def _load_range(rows: list[dict]) -> tuple[float, float]:
    loads = [x["load_before"][0] for x in rows] + [x["load_after"][0] for x in rows]
    return min(loads), max(loads)


def _mem_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):  # pragma: no cover
        return float("nan")


def _verdict(res: dict) -> str:
    """Plain words: at which batch sizes BH pays, from the table."""
    bh = f"BH {HEADLINE_ALPHA}"
    lines = ["\n**Verdict.**"]
    for backend in res["backends"]:
        pts = sorted((x["batch"], x) for x in res["rows"] if x["backend"] == backend and x["strategy"] == bh)
        base = {x["batch"]: x for x in res["rows"] if x["backend"] == backend and x["strategy"] == BASELINE}
        pays = [b for b, x in pts if x["speedup"] >= 1.05]
        not_pays = [b for b, x in pts if x["speedup"] < 1.05]
        desc = "; ".join(
            f"batch {b}: {x['speedup']:.2f}x (distinct experts per layer {x['distinct_per_layer']:.1f} vs "
            f"{base[b]['distinct_per_layer']:.1f} for top-8)"
            for b, x in pts
        )
        verdict = (
            f"pays (at least 5 % faster decode) at batch {', '.join(map(str, pays))}" if pays else "does not pay at any batch size measured"
        )
        if pays and not_pays:
            verdict += f", not at batch {', '.join(map(str, not_pays))}"
        lines.append(f"- `{backend}`: BH({HEADLINE_ALPHA}) {verdict}. {desc}.")
    same = [x["speedup"] for x in res["rows"] if x["strategy"] == "top-8 patched"]
    if same:
        lines.append(
            f"\nHow large a difference is real: patched top-8 does the same expert work as top-8, yet its speed-up "
            f"ranges from {min(same):.2f}x to {max(same):.2f}x in this table - differences of that size are noise "
            "(and the patch's own cost), not an effect of k."
        )
    lines.append("\n" + prose("generation-batch-size"))
    return "\n".join(lines) + "\n"


def goal_rows(r: dict) -> list[list]:
    """This section's rows of the goals table (the page's, and its own)."""
    g, gen = r.get("goals", {}), r.get("generation", {})
    h = gen.get("headline", {})
    rows = []
    if "patch_overhead_decode" in g:
        x = g["patch_overhead_decode"]
        ci = h.get("patch_overhead_decode_ci95")
        how = (
            f"dedicated measurement, median of {gen['patch_overhead'][h['headline_backend']]['rounds']} rounds, 95 % CI "
            f"{ci[0]:+.3f} to {ci[1]:+.3f}"
            if ci
            else "batch-1 rows of the grid"
        )
        rows.append(
            [
                f"patch overhead at equal k, batch-1 decode (patched top-8 / top-8 - 1, {h['headline_backend']}; {how}; "
                f"worst backend {h['patch_overhead_decode_worst_backend']:+.3f})",
                f"{x['value']:+.3f}",
                x["goal"],
                yes(x["met"]) + ("" if not ci else " (whole CI below 0.05)" if ci[1] <= 0.05 else " (CI reaches above 0.05)" if x["met"] else ""),
            ]
        )
    if "decode_vs_ideal" in g:
        x, y = g["decode_vs_ideal"], g["decode_gain_vs_ideal"]
        rows.append(
            [
                f"BH({HEADLINE_ALPHA}) batch-1 decode speed-up / ideal bytes ratio "
                f"({h['decode_speedup_bh_batch1']:.2f}x / {h['decode_ideal_speedup_bh_batch1']:.2f}x, k = {h['decode_bh_mean_k']:.2f})",
                f"{x['value']:.2f}",
                x["goal"],
                yes(x["met"]),
            ]
        )
        rows.append(
            [
                "the same, as a share of the ideal *gain*: (speed-up - 1) / (ideal - 1) (stricter)",
                f"{y['value']:.2f}",
                y["goal"],
                yes(y["met"]),
            ]
        )
    return rows


def why_missed(name: str, r: dict) -> str:
    """Why the goal ``name`` was missed, from the run's own numbers, if it is one of this section's; else ''."""
    gen = r.get("generation", {})
    rows = gen.get("rows", [])
    if name == "patch_overhead_decode" and rows:
        b = gen["headline"]["headline_backend"]
        base = next(x for x in rows if (x["backend"], x["batch"], x["strategy"]) == (b, 1, BASELINE))
        pat = next(x for x in rows if (x["backend"], x["batch"], x["strategy"]) == (b, 1, "top-8 patched"))
        step = "step_cpu_s" if gen.get("clock") == "cpu" else "step_s"
        per_layer = (pat[step] - base[step]) / gen["layers"] * 1e3
        return (
            f" Why: a decode step of one layer takes {base[step] / gen['layers'] * 1e3:.2f} ms here and the patch adds "
            f"{per_layer:.3f} ms to it: the patched router and experts forwards (Python calls) and the recording - a "
            "fixed cost per layer and step, large where the step is short. (TopK at the model's k reuses the router's "
            "own choice: no second softmax and top-k, no logits check, no host read; the ops and host syncs per layer "
            "are counted in the section on them.)"
        )
    if name in ("decode_vs_ideal", "decode_gain_vs_ideal") and rows:
        b = gen["headline"]["headline_backend"]
        pick = {x["strategy"]: x for x in rows if (x["backend"], x["batch"]) == (b, 1)}
        base, bh = pick[BASELINE], pick[f"BH {HEADLINE_ALPHA}"]
        return (
            f" Why: at batch 1 top-8 runs at {base['time_over_limit']:.1f}x and BH at {bh['time_over_limit']:.1f}x "
            "its memory-traffic limit: the part of a step that does not scale with the bytes read (Python, "
            "operator dispatch or kernel launches, attention, the routing step) does not shrink with k."
        )
    return ""


def scaling_paragraphs(r: dict) -> list[str]:
    """What docs/scaling.md, section 4, says of generation on one GPU (from the run; empty without its rows)."""
    gen = r.get("generation", {})
    if "rows" not in gen:
        return []
    pick = {(x["backend"], x["batch"], x["strategy"]): x for x in gen["rows"]}
    bh = f"BH {HEADLINE_ALPHA}"
    lines = []
    for backend in gen["backends"]:
        base, pat, b = (pick[(backend, 1, n)] for n in (BASELINE, "top-8 patched", bh))
        pays = [bb for bb in gen["batches"] if pick[(backend, bb, bh)]["speedup"] >= 1.05]
        lines.append(
            f"- `{backend}`{' (decodes with `batched_mm`)' if backend == 'grouped_mm' else ''}: top-8 decodes "
            f"{base['decode_tok_s']:.1f} tokens/s at batch 1; the patch at equal k costs "
            f"{1 / pat['speedup'] - 1:+.0%}; BH({HEADLINE_ALPHA}) (k = {b['mean_k']:.2f}) runs at "
            f"{b['speedup']:.2f}x top-8 against an ideal {b['ideal_speedup']:.2f}x from the bytes read. "
            + (f"BH is at least 5 % faster at batch {', '.join(map(str, pays))}." if pays else "BH is not faster at any batch size measured.")
        )
    return [
        "**Generation** (16 layers, full vocabulary, bfloat16, random weights with shaped router inputs; "
        "BENCHMARKS-gpu.md section 6):\n",
        "\n".join(lines) + "\n",
        "Decode on one GPU at small batches is bound by Python and kernel launches, not by reading weights "
        f"(top-8 at batch 1 runs at {pick[(gen['backends'][-1], 1, BASELINE)]['time_over_limit']:.0f}x "
        "its memory-traffic limit), so the patch's fixed cost per layer (the strategy's routing, the recording, "
        "the compaction's host read) outweighs the experts it saves. " + prose("scaling-what-would-pay") + "\n",
    ]
