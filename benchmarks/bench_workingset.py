"""Measure the working set of a run's forward passes on the CPU at OLMoE-1B-7B's real layer sizes.

    python benchmarks/bench_workingset.py [--out src/bh_routing/models/working_set.json] [--quick]

Builds the real config (benchmarks/olmoe-1b-7b-0924.config.json) with 1 and 2 of its 16 layers,
random weights in bfloat16, and counts the peak of live tensor bytes
(``bh_routing.analysis.memtrack.LiveBytes``) of each path of a run at a few (batch, sequence) sizes,
then fits peak = fixed + per_token x tokens + per_layer_token x layers x tokens per path: the table
``bh-routing plan`` reads. ``--quick`` (the test suite): the tiny embedded config, one size.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bh_routing.analysis import memtrack  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "src/bh_routing/models/working_set.json")
    ap.add_argument("--config", type=Path, default=ROOT / "benchmarks/olmoe-1b-7b-0924.config.json")
    ap.add_argument("--quick", action="store_true", help="tiny embedded config, one size (a smoke test)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoConfig

    if args.quick:
        from bh_routing.embedded import EMBEDDED_MODEL_DIR

        config, sizes = AutoConfig.from_pretrained(EMBEDDED_MODEL_DIR), ((1, 16), (2, 16), (1, 32))
    else:
        config, sizes = AutoConfig.from_pretrained(args.config.parent, **{}) if args.config.is_dir() else \
            AutoConfig.for_model(**json.loads(args.config.read_text())), ((1, 128), (4, 128), (2, 256))
    start = time.perf_counter()
    rows = memtrack.measure(config, sizes=sizes, layers=(1, 2), dtype=torch.bfloat16)
    doc = {
        "what": "peak live tensor bytes of one call of each path, bfloat16, random weights, CPU (LiveBytes)",
        "command": "python benchmarks/bench_workingset.py" + (" --quick" if args.quick else ""),
        "config": {k: getattr(config, k, None) for k in ("model_type", "hidden_size", "intermediate_size",
                                                         "num_experts", "num_experts_per_tok", "vocab_size",
                                                         "num_attention_heads", "num_key_value_heads")},
        "torch": torch.__version__, "machine": platform.machine(), "seconds": round(time.perf_counter() - start, 1),
        "rows": rows, "fit": memtrack.fit(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
