"""Recording memory: a long run with aggregates only (record_tokens=False) stays flat in memory.

Each size runs in a fresh process (``run.py --memory-child N``): the embedded model routes N
tokens of the held-out text with ``patched(model, BH(0.05), "patch")``, in batches of 8 x 256
tokens. Measured after a first (warm-up) batch has allocated the model's working memory:

* ``rss_growth_mb`` - growth of the process's peak resident memory (``ru_maxrss``) over the run;
* ``python_peak_mb`` - peak of Python-object allocations during the run (``tracemalloc``);
* ``recorder_bytes`` - the Recorder's own state (tensors and lists) at the end.

Flat means: the same at N = 10,000 and N = 100,000 tokens (up to allocator noise).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import torch

from bh_routing import BH
from bh_routing.models import patched

from bench_model import BATCH, available, load, token_windows
from bench_moe import DEFAULT_ALPHA
from common import docstring, failed, table


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _deep_bytes(obj) -> int:
    """Bytes held by the Recorder's state: tensors by storage, containers by their items."""
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + sum(_deep_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sys.getsizeof(obj) + sum(_deep_bytes(v) for v in obj)
    return sys.getsizeof(obj)


def child(num_tokens: int) -> dict:
    """Runs in the child process; returns the measurements for num_tokens tokens."""
    model, tokenizer = load()
    windows = token_windows(tokenizer, num_tokens)  # (N / 256, 256)
    with torch.inference_mode(), patched(model, BH(DEFAULT_ALPHA), "patch") as rec:
        model(windows[:BATCH])  # warm-up: the working memory of one batch
        rec.reset()
        rss_before = _maxrss_mb()
        tracemalloc.start()
        for i in range(0, len(windows), BATCH):
            model(windows[i : i + BATCH])
        _, python_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_after = _maxrss_mb()
    state = {k: v for k, v in vars(rec).items() if k not in ("meta",)}
    return {
        "tokens": int(windows.numel()),
        "rss_growth_mb": rss_after - rss_before,
        "peak_rss_mb": rss_after,
        "python_peak_mb": python_peak / 2**20,
        "recorder_bytes": _deep_bytes(state),
        "tokens_recorded": int(rec.tokens_per_layer()[0]),
        "mean_k": rec.mean_experts_per_token(),
    }


def run(quick: bool, log, *, threads: int) -> dict:
    if not available():
        return {"skipped": "the embedded model is not built"}
    sizes = (4_096, 16_384) if quick else (10_000, 100_000)
    rows = []
    for n in sizes:
        cmd = [sys.executable, str(Path(__file__).with_name("run.py")), "--memory-child", str(n), "--threads", str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        log(
            f"memory {row['tokens']} tokens: peak RSS growth {row['rss_growth_mb']:.1f} MB, "
            f"python peak {row['python_peak_mb']:.2f} MB, recorder {row['recorder_bytes']} B"
        )
        rows.append(row)
    return {"rows": rows, "sizes": list(sizes)}


def section(r: dict) -> str:
    """Section 4, recording memory, from the results of benchmarks/run.py."""
    res = r["memory"]
    if "error" in res:
        return failed("memory", res)
    s = ["## 4. Recording memory\n"]
    if "rows" not in res:
        s.append(f"Not measured: {res.get('skipped')}.")
        return "\n".join(s) + "\n"
    s += [docstring(__doc__), ""]
    s.append("Command: `python benchmarks/run.py --only memory --markdown FILE`.\n")
    rows = [
        [
            f"{x['tokens']:,}",
            f"{x['tokens_recorded']:,}",
            f"{x['mean_k']:.2f}",
            f"{x['rss_growth_mb']:.1f}",
            f"{x['peak_rss_mb']:.0f}",
            f"{x['python_peak_mb']:.3f}",
            f"{x['recorder_bytes']:,}",
        ]
        for x in res["rows"]
    ]
    s.append(table(["tokens routed", "tokens recorded (layer 0)", "mean k", "peak RSS growth MB", "peak RSS MB", "Python alloc peak MB", "Recorder state bytes"], rows))
    return "\n".join(s) + "\n"
