"""GPU memory: the batch cap a run keeps, and the memory plan of ``bh-routing plan``.

A run on a GPU holds the weights plus a bounded working set: forward passes of at most
:func:`batch_cap` sequences (:func:`bound_batches` splits larger ones and drops the KV cache a
plain forward would return), the loss computed over the vocabulary in chunks
(``analysis.evaluate.sequence_nll``), caches released between steps. :func:`plan` predicts the
peak line by line: weights (accelerate's estimate from the config), CUDA context, working set
(measured on the CPU at the real layer sizes: ``working_set.json``, written by
``benchmarks/bench_workingset.py``) and allocator slack.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from .device import GPUS, MAX_BATCH, DevicePolicy, check_finite, decide
from .errors import ModelLoadError

WORKING_SET_FILE = Path(__file__).with_name("working_set.json")
GiB = 2**30
#: CUDA context and libraries beyond the allocator: 0.68 GiB measured on an H100 (CUDA 12,
#: benchmarks/gpu-check/peakmem.json); used for every GPU (a T4's is not measured)
CONTEXT_BYTES = 731_447_296
#: allocator slack allowed beyond the live tensors: an estimate (expandable segments set, caches
#: released between steps; the caching allocator frees its unused blocks before it reports out
#: of memory, so the H100's 0.96 GiB reserved-minus-allocated is not all needed)
SLACK_BYTES = GiB // 4
#: memory of a card left to other processes and the driver: an estimate (a T4's 14.75 GiB -> 14.5 GiB,
#: the cap of the GPU check's T4 emulation, torch.cuda.set_per_process_memory_fraction)
HEADROOM_BYTES = GiB // 4


# ------------------------------------------------------------------ the batch cap of a model
def batch_cap(model) -> int | None:
    """The most sequences one forward pass of ``model`` may take (None: no cap)."""
    return getattr(model, "_bh_batch_cap", None)


def set_batch_cap(model, n: int | None) -> None:
    """Cap ``model``'s forward passes at ``n`` sequences (None: remove the cap); installs :func:`bound_batches`."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"batch cap must be an int >= 1 or None, got {n!r}")
    model._bh_batch_cap = n
    if n is not None and "forward" not in model.__dict__:
        model.forward = bound_batches(model, model.forward)


def _cat(parts: list):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts) if first.dim() > 0 else torch.stack(parts).mean()
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    return first if first is None or isinstance(first, (int, float, str)) else None  # a cache: dropped


def bound_batches(model, forward):
    """``forward`` that runs a batch larger than the cap in slices and concatenates their outputs
    (logits, hidden states); a call without ``past_key_values``/``use_cache`` gets use_cache=False
    (nothing in a run reads the cache of a whole-sequence pass). Generation passes through."""

    @functools.wraps(forward)
    def bounded(*args, **kwargs):
        if "past_key_values" in kwargs or "use_cache" in kwargs or args:
            return forward(*args, **kwargs)
        kwargs["use_cache"] = False
        ids = kwargs.get("input_ids")
        cap = batch_cap(model)
        if ids is None or cap is None or ids.shape[0] <= cap:
            return forward(**kwargs)
        outs = []
        for start in range(0, ids.shape[0], cap):
            part = {k: (v[start : start + cap] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == ids.shape[0]
                        else v) for k, v in kwargs.items()}
            outs.append(forward(**part))
        merged = type(outs[0])(**{k: _cat([o[k] for o in outs]) for k in outs[0].keys()})
        return merged

    bounded._bh_bounded = True
    return bounded


# ------------------------------------------------------------------ the plan
def weight_bytes(config, dtype: torch.dtype) -> int:
    """Bytes of the weights in ``dtype``: accelerate's ``calculate_maximum_sizes`` of the model built from ``config`` with empty weights."""
    from accelerate import init_empty_weights
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return int(calculate_maximum_sizes(model)[0])


@functools.lru_cache(maxsize=1)
def working_set_table() -> dict:
    return json.loads(WORKING_SET_FILE.read_text(encoding="utf-8"))


def working_set(path: str, tokens: int, layers: int, *, scale: float = 1.0) -> int:
    """Peak working-set bytes of ``path`` over ``tokens`` tokens of a ``layers``-layer model (the
    measured fit; ``scale``: the model's (hidden x vocabulary) size relative to the measured one)."""
    f = working_set_table()["fit"][path]
    return int(scale * (f["fixed"] + f["per_token"] * tokens + f["per_layer_token"] * layers * tokens))


def _scale(config) -> float:
    """How much larger the model's per-token tensors are than the measured config's (1.0: the same sizes)."""
    ref = working_set_table()["config"]
    return max(config.vocab_size / ref["vocab_size"], config.hidden_size / ref["hidden_size"],
               getattr(config, "intermediate_size", 1) / (ref["intermediate_size"] or 1), 1.0)


def batch_for(config, seq_len: int) -> tuple[int, int]:
    """(bytes one more sequence of ``seq_len`` tokens adds, bytes of the first one) to the working
    set of a run's forward passes of a model of ``config``."""
    scale, layers = _scale(config), config.num_hidden_layers

    def ws(batch: int) -> int:
        return max(working_set(p, batch * seq_len, layers, scale=scale) for p in ("nll", "forward"))

    return max(1, ws(2) - ws(1)), ws(1)


def read_config(model: str | None):
    """A model's configuration only (no weights): a folder, a config.json file, a hub id, or None (the embedded model)."""
    from transformers import AutoConfig

    if model is None:
        from ..embedded import EMBEDDED_MODEL_DIR

        model = str(EMBEDDED_MODEL_DIR)
    path = Path(model).expanduser()
    try:
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return AutoConfig.for_model(**data)
        return AutoConfig.from_pretrained(str(path) if path.is_dir() else model)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot read the configuration of {model!r}: {first}") from None


def gpu_spec(gpu: str | None, memory: str | None, capability: str | None):
    """(name, capability, total bytes) from ``--gpu`` or ``--gpu-memory``/``--compute-capability``."""
    if gpu is not None:
        if gpu.lower() not in GPUS:
            raise ModelLoadError(f"gpu must be one of {', '.join(GPUS)}, got {gpu!r}")
        s = GPUS[gpu.lower()]
        return s.name, s.capability, s.total_bytes
    if memory is None or capability is None:
        raise ModelLoadError("give --gpu (t4, l4, a100, h100) or both --gpu-memory and --compute-capability")
    return "GPU", parse_capability(capability), parse_memory(memory)


def parse_memory(text: str) -> int:
    units = {"gib": GiB, "gb": 10**9, "mib": 2**20, "mb": 10**6}
    t = text.strip().lower().replace(" ", "")
    for u, mult in units.items():
        if t.endswith(u):
            try:
                value = float(t[: -len(u)])
            except ValueError:
                break
            if value > 0:
                return int(value * mult)
    raise ModelLoadError(f"gpu memory must look like 15GiB, 16GB or 15102MiB, got {text!r}")


def parse_capability(text: str) -> tuple[int, int]:
    parts = str(text).strip().split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ModelLoadError(f"compute capability must look like 7.5, got {text!r}")
    return int(parts[0]), int(parts[1])


def _steps_batches(quick: bool) -> tuple[int, int]:
    """(largest batch, sequence length) the run's steps ask for: 16 sequences (matching, certify) of
    128 tokens with --quick, 256 without."""
    return MAX_BATCH, 128 if quick else 256


def plan(config, *, name: str, capability: tuple[int, int], total_bytes: int, dtype: str | None = None,
         experts_backend: str | None = None, batch_size: int | None = None, quick: bool = False,
         seq_len: int | None = None, memory_fraction: float | None = None) -> dict:
    """The memory plan of ``bh-routing run`` for ``config`` on a GPU: policy and budget, line by line."""
    want_batch, seq = _steps_batches(quick)
    seq = seq_len or seq
    layers = config.num_hidden_layers
    cap_bytes = int(total_bytes * memory_fraction) if memory_fraction else total_bytes - HEADROOM_BYTES
    pol = decide(capability, device="cuda:0", gpu=name, total_bytes=total_bytes, dtype=dtype,
                 experts_backend=experts_backend)
    weights = weight_bytes(config, getattr(torch, pol.dtype))
    scale = _scale(config)

    def ws(batch: int) -> int:
        return max(working_set(p, batch * seq, layers, scale=scale) for p in ("nll", "forward"))

    left = cap_bytes - weights - CONTEXT_BYTES - SLACK_BYTES
    per_seq, first = batch_for(config, seq)
    pol = decide(capability, device="cuda:0", gpu=name, total_bytes=total_bytes, dtype=dtype,
                 experts_backend=experts_backend, batch_size=batch_size,
                 available_bytes=left - first + per_seq, per_sequence_bytes=per_seq)
    batch = min(pol.batch_size or want_batch, want_batch)
    work = ws(batch)
    lines = [
        ("weights", weights, f"accelerate's calculate_maximum_sizes, {pol.dtype}"),
        ("CUDA context", CONTEXT_BYTES, "measured on an H100 (benchmarks/gpu-check/peakmem.json)"),
        ("working set", work, f"batch {batch} x {seq} tokens, chunked loss, no KV cache "
                              f"(measured on the CPU at the real layer sizes: {WORKING_SET_FILE.name})"),
        ("allocator slack", SLACK_BYTES, "estimate (expandable segments, caches released between steps)"),
    ]
    peak = sum(b for _, b, _ in lines)
    allocated = weights + work
    return {
        "gpu": name, "compute_capability": f"{capability[0]}.{capability[1]}", "total_gib": total_bytes / GiB,
        "limit_gib": cap_bytes / GiB, "dtype": pol.dtype, "experts_backend": pol.experts_backend, "batch_size": batch,
        "seq_len": seq, "quick": quick, "policy": pol.line(),
        "budget": [{"item": k, "gib": b / GiB, "how": how} for k, b, how in lines],
        "predicted_allocated_gib": allocated / GiB, "predicted_peak_gib": peak / GiB,
        "fits": peak <= cap_bytes,
    }


def format_plan(p: dict) -> str:
    rows = [p["policy"], f"{'item':<16} {'GiB':>7}  how"]
    rows += [f"{b['item']:<16} {b['gib']:7.2f}  {b['how']}" for b in p["budget"]]
    rows.append(f"{'predicted peak':<16} {p['predicted_peak_gib']:7.2f}  (live tensors {p['predicted_allocated_gib']:.2f})")
    verdict = "fits" if p["fits"] else "does NOT fit"
    rows.append(f"{verdict} in {p['limit_gib']:.2f} GiB of {p['gpu']}'s {p['total_gib']:.2f} GiB "
                f"(compute capability {p['compute_capability']})")
    return "\n".join(rows)


PROBE_TEXT = "The quick brown fox jumps over the lazy dog. def main():\n    return sorted(values)[0]\n" * 4


def apply_policy(model, tokenizer, policy: DevicePolicy, *, seq_len: int = 256, log=None) -> DevicePolicy:
    """After loading on CUDA: the batch cap from the free memory, the inf/NaN probe in float16, the line printed."""
    import sys

    import dataclasses

    if policy.batch_size is None:
        free, _ = torch.cuda.mem_get_info(torch.device(policy.device))
        per_seq, first = batch_for(model.config, seq_len)
        sized = decide(policy.capability, available_bytes=free - SLACK_BYTES - first + per_seq, per_sequence_bytes=per_seq)
        policy = dataclasses.replace(policy, batch_size=sized.batch_size,
                                     why=policy.why + tuple(w for w in sized.why if w.startswith("batch")))
    set_batch_cap(model, policy.batch_size)
    model._bh_device_policy = policy
    (log or (lambda line: print(line, file=sys.stderr, flush=True)))(policy.line())
    if policy.dtype == "float16":
        check_finite(model, tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"][:, :seq_len])
    return policy
