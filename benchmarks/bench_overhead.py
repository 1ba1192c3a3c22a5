"""The fixed cost of routing with a strategy, per MoE layer and forward: torch ops and host syncs.

    python benchmarks/bench_overhead.py                  # CPU: counts and thread-time ratios
    python benchmarks/bench_overhead.py --device cuda    # on a GPU: counts, syncs and wall-time ratios
    python benchmarks/bench_overhead.py --no-timing      # counts only (a few seconds)
    python benchmarks/bench_overhead.py --compiled       # each variant compiled whole: capture and kernels
    python benchmarks/bench_overhead.py --before ../main/src   # and another checkout's code beside, in the same rounds

On a GPU each torch op is (at least) one kernel launch, 5-10 us of host time, and each host
read of a device value (``.item()``, ``bool(t)``, ``int(t)``, ``.nonzero()``, a boolean-mask
index, a copy to the host) is a full synchronisation. At batch-1 decode a layer's step is a
millisecond or two, so tens of ops and a couple of syncs per layer are the whole overhead of the
patch. They are counted here by machine, not by clock. The patch's own code (router and experts
wrappers, recording, compaction) takes the same path on every device, so its CPU counts are its
GPU counts; BH's routing has CPU fast paths (numpy, see ``numpy``), so on a GPU it runs other
torch ops than here - run ``--device cuda`` there for its exact counts:

* ``ops``: the aten ops one forward executes (a ``TorchDispatchMode`` counting every call that
  reaches the dispatcher's Python key); ``kernels`` leaves out views and aliases (no launch).
* ``syncs``: the ops among them that read device data on the host or whose output size depends
  on the data: ``_local_scalar_dense`` (item / bool / int), ``nonzero``, ``masked_select``,
  ``unique``, ``repeat_interleave`` with tensor repeats and no ``output_size``, ``bincount``,
  ``index`` with a boolean index, and blocking copies between the host and a device (both
  directions: a copy from pageable host memory waits for the stream too). On the CPU none of
  these waits for anything, but each is one synchronisation on a GPU; host-device copies only
  show on a GPU run. There, ``cuda_syncs`` also counts what CUDA itself reports
  (``torch.cuda.set_sync_debug_mode``).
* ``numpy``: calls of ``Tensor.numpy()`` (the CPU fast paths of BH; on a GPU those branches are
  not taken and torch ops run instead, so the GPU op count of BH is higher than the CPU's).

Per layer: (count of the variant - count of the unpatched model) / MoE layers; ``syncs / layer``
is the variant's syncs over the layers (the unpatched model has none at these shapes).

Variants, on the embedded model (``load_model(None)``: 4 MoE layers of 64 experts, top-8,
float32), ``grouped_mm`` experts: the unpatched model; every strategy of :func:`strategies` in
patch mode (TopK(8), TopK(4), TopP, WeightRatio, BH with each p-value method - calibrated on the
held-out text - and each selection, the entropy ladder); ``patched(model, BH(0.05), "analyze")``. Shapes: one decode step at batch 1 (one new
token after a 32-token prompt, KV cache) and a prefill of 2,048 tokens (2 x 1,024).

Timing (``--no-timing`` skips it): each variant on its own deep copy of the model, patched for
the whole run, timed in rounds against the unpatched copy with the order rotated
(``common.rounds``); the ratio is the median over rounds of t(variant) / t(unpatched) of the same
round. Clock: the calling thread's CPU time on the CPU (one torch thread: all of torch's work
runs in it; a shared machine disturbs it least), wall time with a synchronisation on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from common import docstring, failed, rounds, set_device, table  # noqa: E402

PROMPT, DECODE_STEPS = 32, 8
PREFILL_BATCH, PREFILL_LEN = 2, 1024
ALPHA = 0.05
_SYNC_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "unique_dim_consecutive",
    "bincount",
}


def _is_sync(func, args, kwargs) -> bool:
    """Whether this aten call reads device data on the host, or sizes its output by the data."""
    name = func._schema.name.split("::")[-1]
    if name in _SYNC_OPS:
        return True
    if name == "repeat_interleave" and isinstance(args[0] if args else None, torch.Tensor):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None
    if name in ("index", "index_put", "index_put_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
    if name == "_to_copy":  # a blocking copy between the host and a device waits for the stream
        src, device = args[0], kwargs.get("device")
        return device is not None and _crosses(src.device, torch.device(device)) and not kwargs.get("non_blocking")
    if name == "copy_":
        dst, src = args[0], args[1]
        blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        return isinstance(src, torch.Tensor) and _crosses(src.device, dst.device) and blocking
    return False


def _crosses(a: torch.device, b: torch.device) -> bool:
    return a.type != b.type and "cpu" in (a.type, b.type)


class OpCounter(TorchDispatchMode):
    """Counts aten calls, non-view calls (kernels) and host syncs while active; Tensor.numpy too."""

    def __init__(self):
        super().__init__()
        self.ops = self.kernels = self.syncs = self.numpy = 0
        self.cuda_syncs: int | None = None  # on a GPU: the synchronisations CUDA reports (see count)
        self.sync_names: Counter = Counter()
        self.names: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        name = func._schema.name.split("::")[-1]
        self.names[name] += 1
        if not func.is_view and name not in ("detach", "alias", "lift_fresh"):
            self.kernels += 1
        if _is_sync(func, args, kwargs):
            self.syncs += 1
            self.sync_names[name] += 1
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def counting(self):
        original = torch.Tensor.numpy

        def numpy(t, *a, **k):
            self.numpy += 1
            return original(t, *a, **k)

        torch.Tensor.numpy = numpy
        try:
            with self:
                yield self
        finally:
            torch.Tensor.numpy = original


def count(fn) -> OpCounter:
    """Count the ops and syncs of ``fn()``; on a GPU also the synchronisations CUDA itself reports
    (``torch.cuda.set_sync_debug_mode``: ``cuda_syncs``, None on the CPU)."""
    counter = OpCounter()
    if not torch.cuda.is_available():
        with counter.counting():
            fn()
        return counter
    import warnings

    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with counter.counting():
                fn()
        finally:
            torch.cuda.set_sync_debug_mode(before)
    counter.cuda_syncs = sum("synchroniz" in str(w.message) for w in caught)
    return counter


def calibration_for(model, tokenizer, device, pkg: str = "bh_routing"):
    """A calibration of ``model`` fitted on the embedded held-out text (router logits, 'unrouted' null)."""
    core, models = importlib.import_module(f"{pkg}.core.calibration"), importlib.import_module(f"{pkg}.models")
    from bh_routing.embedded import default_eval_text
    from bh_routing.models.adapters.base import text_config

    adapter, config = models.get_adapter(model), text_config(model)
    ids = torch.tensor(tokenizer(default_eval_text())["input_ids"][: 8 * 256]).view(8, 256).to(device)  # (8, 256)
    with torch.no_grad():
        logits = model(ids, output_router_logits=True).router_logits
    builder = core.CalibrationBuilder(
        num_layers=len(logits), num_experts=adapter.num_experts(config), top_k=adapter.top_k(config), reservoir_size=1024
    )
    for layer, z in enumerate(logits):
        builder.update(layer, z)
    return builder.finalize(model_name="embedded", model_fingerprint=models.model_fingerprint(model))


def strategies(calibration, pkg: str = "bh_routing") -> dict:
    """name -> Strategy of package ``pkg``: every built-in family and BH's p-value methods and selections."""
    lib = importlib.import_module(pkg)
    entropy = getattr(importlib.import_module(f"{pkg}.core.strategies"), "Entropy", None)
    out = {
        "TopK(8)": lib.TopK(8),
        "TopK(4)": lib.TopK(4),
        "TopP(0.6)": lib.TopP(0.6),
        "WeightRatio(0.2)": lib.WeightRatio(0.2),
        "BH(0.05) empirical": lib.BH(ALPHA),
        "BH(0.05) empirical router": lib.BH(ALPHA, selection="router"),
        "BH(0.05) calibrated": lib.BH(ALPHA, pvalues="calibrated", calibration=calibration),
        "BH(0.05) calibrated router": lib.BH(ALPHA, pvalues="calibrated", calibration=calibration, selection="router"),
        "BH(0.05) standardized": lib.BH(ALPHA, pvalues="standardized", calibration=calibration),
        "BH(0.05) standardized router": lib.BH(
            ALPHA, pvalues="standardized", calibration=calibration, selection="router"
        ),
    }
    if entropy is not None:
        out["Entropy(1.0)"] = entropy(1.0)
    return out


def variants(calibration, pkg: str = "bh_routing", prefix: str = "", *, only: list[str] | None = None) -> dict:
    """name -> (patched, strategy, mode) of package ``pkg``; None for the unpatched model.

    Every strategy of :func:`strategies` in patch mode, and BH(0.05) in analyze mode; ``only``:
    the strategy names to keep (default all)."""
    patched = importlib.import_module(f"{pkg}.models").patched
    out = {} if prefix else {"unpatched": None}
    for name, strategy in strategies(calibration, pkg).items():
        if only is None or name in only:
            out[f"{prefix}patch {name}"] = (patched, strategy, "patch")
    if only is None or "analyze" in only:
        out[f"{prefix}analyze BH(0.05)"] = (patched, importlib.import_module(pkg).BH(ALPHA), "analyze")
    return out


def import_before(src: Path) -> str:
    """Import the ``bh_routing`` package of another checkout's ``src`` as ``bh_routing_before``.

    A copy under that name (its modules import each other relatively; the lazy attribute table of
    its ``__init__`` names the package, and is renamed) so that both versions run in one process.
    """
    target = Path(tempfile.mkdtemp(prefix="bh-before-")) / "bh_routing_before"
    shutil.copytree(src / "bh_routing", target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        text = path.read_text()
        if '"bh_routing.' in text:
            path.write_text(text.replace('"bh_routing.', '"bh_routing_before.'))
    sys.path.insert(0, str(target.parent))
    importlib.import_module("bh_routing_before")
    return "bh_routing_before"


class Workload:
    """A decode step at batch 1 with a KV cache, or a prefill of 2,048 tokens, on one model copy."""

    def __init__(self, model, kind: str, vocab: int, device):
        from transformers import DynamicCache

        self.model, self.kind = model, kind
        g = torch.Generator().manual_seed(0)
        if kind == "decode":
            self.prompt = torch.randint(vocab, (1, PROMPT), generator=g).to(device)  # (1, P)
            self.next = torch.randint(vocab, (1, 1), generator=g).to(device)  # (1, 1)
            self.cache = DynamicCache(config=model.config)
            with torch.no_grad():
                model(self.prompt, past_key_values=self.cache, use_cache=True)
        else:
            self.ids = torch.randint(vocab, (PREFILL_BATCH, PREFILL_LEN), generator=g).to(device)  # (B, S)

    def step(self):
        """One forward: the decode step (cache cropped back to the prompt first) or the prefill."""
        with torch.no_grad():
            if self.kind == "decode":
                extra = self.cache.get_seq_length() - PROMPT
                if extra:
                    self.cache.crop(-extra)  # back to the prompt (a negative value removes tokens)
                return self.model(self.next, past_key_values=self.cache, use_cache=True)
            return self.model(self.ids, use_cache=False)

    def timed(self):
        """What one timing round runs: DECODE_STEPS decode steps, or one prefill."""
        for _ in range(DECODE_STEPS if self.kind == "decode" else 1):
            self.step()


def run(
    *,
    device: str = "cpu",
    backend: str = "grouped_mm",
    timing: bool = True,
    repeats: int = 15,
    before: Path | None = None,
    log=print,
) -> dict:
    """Counts (and timing ratios) per variant and shape; see the module notes.

    ``before``: another checkout's ``src`` folder; its variants run beside this one's, named
    "before: ...", in the same rounds (so the two versions' ratios are measured side by side).
    """
    from bh_routing.models import load_model

    device = "cuda:0" if device == "cuda" else device  # one device, no device_map="auto" (and no hooks)
    model, tokenizer = load_model(None, device=device, dtype="float32")
    model.set_experts_implementation(backend)
    num_layers = sum(1 for m in model.modules() if type(m).__name__ == "OlmoeTopKRouter")
    vocab = model.config.vocab_size
    specs = variants(calibration_for(model, tokenizer, device))
    if before is not None:
        pkg = import_before(before)
        specs.update(variants(calibration_for(model, tokenizer, device, pkg), pkg, prefix="before: "))
    rows = []
    with contextlib.ExitStack() as stack:
        copies = {}
        for name, spec in specs.items():
            m = copy.deepcopy(model)
            if spec is not None:
                patched, strategy, mode = spec
                stack.enter_context(patched(m, strategy, mode))
            copies[name] = m
        for kind in ("decode", "prefill"):
            loads = {name: Workload(m, kind, vocab, device) for name, m in copies.items()}
            counts = {}
            for name, work in loads.items():
                work.step()  # warm-up: lazy allocations, caches of thresholds
                counts[name] = count(work.step)
            base = counts["unpatched"]
            times = {}
            if timing:
                clock = time.thread_time if device == "cpu" else time.perf_counter
                others = {name: loads[name].timed for name in loads if name != "unpatched"}
                times = rounds(loads["unpatched"].timed, others, repeats=repeats, clock=clock)
            for name, c in counts.items():
                row = {
                    "shape": "decode, batch 1" if kind == "decode" else f"prefill, {PREFILL_BATCH * PREFILL_LEN:,} tokens",
                    "variant": name,
                    "ops": c.ops,
                    "kernels": c.kernels,
                    "syncs": c.syncs,
                    "numpy": c.numpy,
                    "ops_per_layer": (c.ops - base.ops) / num_layers,
                    "kernels_per_layer": (c.kernels - base.kernels) / num_layers,
                    "syncs_per_layer": (c.syncs - base.syncs) / num_layers,
                    "sync_ops": dict(c.sync_names),
                    "cuda_syncs": c.cuda_syncs,
                    "cuda_syncs_per_layer": None if c.cuda_syncs is None else (c.cuda_syncs - base.cuda_syncs) / num_layers,
                    "time_ratio": times[name]["ratio"] if name in times else (1.0 if timing else None),
                }
                rows.append(row)
                log(_line(row))
    return {"device": device, "backend": backend, "layers": num_layers, "repeats": repeats if timing else 0, "rows": rows}


def compiled(
    *, device: str = "cpu", backend: str = "grouped_mm", compiler: str = "inductor", only: list[str] | None = None, log=print
) -> dict:
    """Each variant compiled whole (``torch.compile(model, fullgraph=True, dynamic=False)``), decode step.

    One decode step at batch 1 with a static cache (the shape a compiled decoder runs). Per
    variant: whether the fullgraph capture succeeded (else the compiler's first line), the graphs
    captured, and with inductor the kernels it generated for the step (``kernels``: each runs once
    per forward; on a GPU each is a launch, which CUDA graphs then replay as one). A fullgraph
    capture has no host sync in it: a host read is a graph break or a data-dependent error.
    """
    from torch._dynamo.utils import counters
    from transformers import StaticCache

    from bh_routing.models import load_model

    device = "cuda:0" if device == "cuda" else device
    model, tokenizer = load_model(None, device=device, dtype="float32")
    model.set_experts_implementation(backend)
    specs = variants(calibration_for(model, tokenizer, device), only=only)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(model.config.vocab_size, (1, PROMPT), generator=g).to(device)  # (1, P)
    nxt = torch.randint(model.config.vocab_size, (1, 1), generator=g).to(device)  # (1, 1)
    rows = []
    for name, spec in specs.items():
        m = copy.deepcopy(model)
        torch._dynamo.reset()
        counters.clear()
        row = {"variant": name, "compiler": compiler, "fullgraph": False, "error": None, "graphs": None, "kernels": None}
        with contextlib.ExitStack() as stack:
            if spec is not None:
                patched, strategy, mode = spec
                stack.enter_context(patched(m, strategy, mode))
            stack.enter_context(torch.no_grad())
            cache = StaticCache(config=m.config, max_cache_len=PROMPT + 2)
            m(prompt, past_key_values=cache, use_cache=True)
            position = torch.tensor([PROMPT], device=device)
            step = torch.compile(m, fullgraph=True, dynamic=False, backend=compiler)
            before = _inductor_kernels()
            try:
                for _ in range(2):
                    step(nxt, past_key_values=cache, cache_position=position, use_cache=True)
                row.update(fullgraph=True, graphs=counters["stats"]["unique_graphs"])
                after = _inductor_kernels()
                row["kernels"] = None if after is None or compiler != "inductor" else after - before
            except Exception as exc:  # the compiler's refusal is the result
                row["error"] = str(exc).strip().splitlines()[0][:200]
        rows.append(row)
        log(f"compiled {name:<41} fullgraph {'yes' if row['fullgraph'] else 'NO: ' + str(row['error'])}"
            + (f", kernels {row['kernels']}" if row["kernels"] is not None else ""))
    return {"device": device, "backend": backend, "compiler": compiler, "rows": rows}


def _inductor_kernels() -> int | None:
    try:
        from torch._inductor import metrics
    except ImportError:
        return None
    return int(metrics.generated_kernel_count)


def compiled_table(res: dict) -> str:
    """The compiled results as a Markdown table."""
    rows = [
        [r["variant"], "yes" if r["fullgraph"] else "no: " + str(r["error"]), r["graphs"] or "-", "-" if r["kernels"] is None else r["kernels"]]
        for r in res["rows"]
    ]
    return table(["variant", "fullgraph capture", "graphs", "kernels generated (one decode step)"], rows) + "\n"


def _line(r: dict) -> str:
    ratio = "" if r["time_ratio"] is None else f", time x{r['time_ratio']:.3f}"
    return (
        f"{r['shape']:>24} | {r['variant']:<41} ops {r['ops']:5d} (+{r['ops_per_layer']:6.1f}/layer) "
        f"kernels +{r['kernels_per_layer']:6.1f}/layer syncs {r['syncs']:3d} ({r['syncs_per_layer']:+.2f}/layer) "
        f"numpy {r['numpy']:3d}{ratio}" + ("" if r["cuda_syncs"] is None else f", CUDA-reported syncs {r['cuda_syncs']}")
    )


def results_table(res: dict) -> str:
    """The results as a Markdown table."""
    clock = "thread CPU time" if res["device"] == "cpu" else "wall time"
    cuda = any(r["cuda_syncs"] is not None for r in res["rows"])
    header = ["shape", "variant", "aten ops / forward", "extra ops / layer", "extra kernels / layer", "syncs / forward",
              "syncs / layer", *(["CUDA-reported syncs / layer"] if cuda else []), "numpy calls", f"time / unpatched ({clock})"]
    rows = []
    for r in res["rows"]:
        syncs = ", ".join(f"{k} {v}" for k, v in sorted(r["sync_ops"].items())) or "none"
        rows.append(
            [r["shape"], r["variant"], r["ops"], f"{r['ops_per_layer']:+.1f}", f"{r['kernels_per_layer']:+.1f}", f"{r['syncs']} ({syncs})",
             f"{r['syncs_per_layer']:.2f}", *([f"{r['cuda_syncs_per_layer']:.2f}"] if cuda else []), r["numpy"],
             "-" if r["time_ratio"] is None else f"{r['time_ratio']:.3f}"]
        )
    return table(header, rows) + "\n"


def section(r: dict) -> str:
    """The part of section 3 on torch ops and host syncs per MoE layer, from the results of benchmarks/run.py."""
    res = r["overhead"]
    if "error" in res:
        return failed("overhead", res)
    s = ["### Torch ops and host syncs per MoE layer\n", docstring(__doc__), ""]
    s.append(
        "Command: `python benchmarks/run.py --only overhead --markdown FILE`, or standalone "
        f"`python benchmarks/bench_overhead.py{'' if res['device'] == 'cpu' else ' --device ' + res['device']}`. "
        f"Backend {res['backend']}, {res['layers']} MoE layers, {res['repeats']} timed rounds.\n"
    )
    s.append(results_table(res))
    return "\n".join(s) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--backend", default="grouped_mm", choices=("grouped_mm", "eager", "batched_mm"))
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds (after one warm-up round)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-timing", action="store_true", help="only count ops and syncs")
    ap.add_argument(
        "--before",
        type=Path,
        metavar="SRC",
        help="another checkout's src/ folder (e.g. of the commit before a change): its variants run beside, as 'before: ...'",
    )
    ap.add_argument(
        "--compiled", action="store_true", help="compile each variant whole (fullgraph=True) and count what it generated"
    )
    ap.add_argument("--compiler", default="inductor", help="torch.compile backend for --compiled (default inductor)")
    ap.add_argument("--only", default="", help="with --compiled: comma-separated strategy names (default all)")
    args = ap.parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"error: --device {args.device} asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.threads < 1:
        print("error: --repeats and --threads must be >= 1", file=sys.stderr)
        return 2
    if args.before is not None and not (args.before / "bh_routing" / "__init__.py").is_file():
        print(f"error: --before {args.before}: no bh_routing package there", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    set_device(args.device)
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    if args.compiled:
        only = [name.strip() for name in args.only.split(",") if name.strip()] or None
        res = compiled(device=args.device, backend=args.backend, compiler=args.compiler, only=only)
        print()
        print(compiled_table(res))
        return 0 if all(r["fullgraph"] for r in res["rows"]) else 1
    res = run(device=args.device, backend=args.backend, timing=not args.no_timing, repeats=args.repeats, before=args.before)
    print()
    print(results_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
