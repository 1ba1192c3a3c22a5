"""Measure the working set of a forward pass on the CPU: the peak of live tensor bytes it adds.

:class:`LiveBytes` counts every tensor storage created inside it until the storage is freed (a
``TorchDispatchMode``: the same allocations a GPU run makes, counted by size, not by allocator
blocks), so the working set of the run's forward passes can be measured at the real layer sizes
without a GPU. :func:`measure` runs the paths of a run at a few (batch, sequence, layers) sizes;
``benchmarks/bench_workingset.py`` writes the table ``bh-routing plan`` reads
(``models/working_set.json``).
"""

from __future__ import annotations

import time
import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

#: the paths of a run measured: "nll" the evaluation's chunked loss under a patched strategy with
#: per-token records (analysis.evaluate.sequence_nll); "forward" ``model(input_ids=...)`` as the run
#: calls it on a GPU (models.memory.bound_batches: use_cache=False), its logits kept (matching,
#: oracle, certify); before this policy: "forward_cache", the same with the KV cache transformers
#: returns by default, and "nll_full", the loss from full (batch, seq, vocab) float32 logits
PATHS = ("nll", "forward", "forward_cache", "nll_full")


class LiveBytes(TorchDispatchMode):
    """Inside: ``peak`` - the most bytes of tensors created inside alive at once; ``current``."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._live: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                key, size = st.data_ptr(), st.nbytes()
                if size == 0 or key in self._live or key in inputs:
                    continue  # a view of a counted storage or of an input (a weight, say)
                self._live[key] = size
                self.current += size
                self.peak = max(self.peak, self.current)
                weakref.finalize(st, self._free, key)
        return out


def full_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """The loss as computed before chunking: full logits, a float32 copy, cross-entropy."""
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:], reduction="none").sum(dim=1)


def build(config, layers: int, dtype: torch.dtype):
    """A random-weight causal LM of ``config`` with ``layers`` layers (real layer sizes) in ``dtype``."""
    from transformers import AutoModelForCausalLM

    config = type(config).from_dict({**config.to_dict(), "num_hidden_layers": layers})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


@torch.no_grad()
def measure_path(model, path: str, batch: int, seq: int) -> int:
    """Peak bytes of tensors alive at once during ``path`` at (batch, seq)."""
    from ..core import BH
    from ..models import patched
    from .evaluate import sequence_nll

    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    with LiveBytes() as live:
        if path == "nll":
            with patched(model, BH(alpha=0.05), mode="patch", record_tokens=True):
                sequence_nll(model, ids)
        elif path in ("forward", "forward_cache"):
            out = model(input_ids=ids, **({} if path == "forward_cache" else {"use_cache": False}))
            del out
        elif path == "nll_full":
            full_nll(model, ids)
        else:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    return live.peak


def measure(config, *, sizes=((1, 128), (4, 128), (2, 256)), layers=(1, 2), dtype=torch.bfloat16,
            paths=PATHS, log=print) -> list[dict]:
    """Rows {path, layers, batch, seq, tokens, peak_bytes, s} over ``paths`` x ``layers`` x ``sizes``."""
    rows = []
    for n_layers in layers:
        model = build(config, n_layers, dtype)
        for path in paths:
            for batch, seq in sizes:
                start = time.perf_counter()
                peak = measure_path(model, path, batch, seq)
                rows.append({"path": path, "layers": n_layers, "batch": batch, "seq": seq, "tokens": batch * seq,
                             "peak_bytes": peak, "s": round(time.perf_counter() - start, 2)})
                log(f"working set {path} layers={n_layers} batch={batch} seq={seq}: {peak / 2**20:.1f} MiB "
                    f"({rows[-1]['s']:.1f} s)")
        del model
    return rows


def fit(rows: list[dict]) -> dict:
    """Per path: peak = fixed + per_token x tokens + per_layer_token x layers x tokens (least squares).

    The memory that grows with the layers (the KV cache a forward returns, per-layer records) is
    the per-layer term; what one layer's computation and the vocabulary projection need is per
    token; the vocabulary chunk of the loss is the fixed part.
    """
    import numpy as np

    out = {}
    for path in sorted({r["path"] for r in rows}):
        rs = [r for r in rows if r["path"] == path]
        a = np.array([[1.0, r["tokens"], r["layers"] * r["tokens"]] for r in rs])
        y = np.array([r["peak_bytes"] for r in rs], float)
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        resid = float(np.max(np.abs(a @ coef - y) / y))
        out[path] = {"fixed": float(coef[0]), "per_token": float(coef[1]), "per_layer_token": float(coef[2]),
                     "max_rel_residual": resid}
    return out
