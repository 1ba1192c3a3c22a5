"""Forward tokens of a run, per step: the configuration's cost, independent of the model's weights.

    python benchmarks/count_forward.py [--config colab-t4] [--out FILE.json] [RunConfig overrides as key=value ...]

Runs the study on the embedded model (CPU) with a pre-hook on the decoder counting the tokens of
every forward pass, per step; prints them with the FLOPs they cost OLMoE-1B-7B (2 x its active
parameters per token, 2.4 GFLOP; attention scores left out) and the estimated T4 time at an assumed
6.5 TFLOP/s (10 % of a T4's float16 peak; an estimate, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

OLMOE_FLOP_PER_TOKEN = 2 * 1.18e9  # 16 layers x (attention 16.8 M + 8 experts x 6.3 M + router) + lm_head 103 M
T4_ASSUMED_FLOPS = 6.5e12


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="colab-t4")
    ap.add_argument("--out", type=Path)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    import bh_routing.study.pipeline as pipeline
    from bh_routing.study import RunConfig, Study
    from bh_routing.study.config import load_config_file

    values = {} if args.config == "full" else load_config_file(args.config)
    for kv in args.overrides:
        k, v = kv.split("=", 1)
        values[k] = json.loads(v)
    tokens: dict[str, int] = {}
    current = {"step": None}
    original = pipeline.compute_step

    def counted(step, ctx, **kw):
        current["step"] = step.name
        return original(step, ctx, **kw)

    pipeline.compute_step = counted
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        study = Study(RunConfig(**values), out)
        decoder = study.inputs.model.get_decoder()

        def count(module, a, kw):
            ids = kw.get("input_ids", a[0] if a else None)
            n = ids.numel() if ids is not None else kw["inputs_embeds"].shape[0] * kw["inputs_embeds"].shape[1]
            tokens[current["step"] or "load"] = tokens.get(current["step"] or "load", 0) + n

        decoder.register_forward_pre_hook(count, with_kwargs=True)
        study.run()
        wall = time.perf_counter() - start
    total = sum(tokens.values())
    doc = {"config": args.config, "overrides": args.overrides, "tokens_per_step": tokens, "tokens": total,
           "flop_olmoe_1b_7b": total * OLMOE_FLOP_PER_TOKEN,
           "t4_estimate_s": total * OLMOE_FLOP_PER_TOKEN / T4_ASSUMED_FLOPS,
           "t4_estimate_method": "forward tokens x 2.36 GFLOP / 6.5 TFLOP/s (assumed: 10 % of a T4's float16 peak)",
           "embedded_cpu_wall_s": round(wall, 1)}
    for step, n in tokens.items():
        print(f"{step:<14} {n:>12,d} tokens  {n * OLMOE_FLOP_PER_TOKEN / 1e12:8.1f} TFLOP")
    print(f"{'total':<14} {total:>12,d} tokens  {doc['flop_olmoe_1b_7b'] / 1e12:8.1f} TFLOP; "
          f"T4 estimate {doc['t4_estimate_s'] / 60:.1f} min ({doc['t4_estimate_method']})")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
