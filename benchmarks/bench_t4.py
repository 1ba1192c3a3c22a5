"""T4 emulation and per-step timing of `bh-routing run` on the full-size OLMoE-1B-7B (random weights).

    python benchmarks/bench_t4.py --out LOGDIR/t4.json [--full-run] [--dry-run]

1. T4 emulation: float16, eager experts, the process capped at 14.5 GiB
   (``torch.cuda.set_per_process_memory_fraction``), `bh-routing run --config colab-t4` on the real-size
   model to the end: each step's wall time, the peak (max allocated, max reserved, CUDA context) and
   the device policy line; the memory plan's prediction for the same run beside it.
2. ``--full-run``: the full default `bh-routing run` (the GPU's own policy, no cap), timed per step.

The model is saved once (bench_peakmem.save_model: bfloat16 random weights and the embedded
tokenizer, in /dev/shm where there is one); each run is a fresh process. ``--dry-run``: the CPU, a
2-layer tiny config, `bh-routing calibrate --quick` instead of `run`, no memory cap: checks the
script, measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
MARK = "T4-JSON "
T4_CAP_GIB = 14.5


def child(model_dir: str, out_dir: str, args: list[str], cap_gib: float | None) -> dict:
    """In a fresh process: the run in-process, each step timed, then its peak memory."""
    import torch

    import bh_routing.study.pipeline as pipeline
    from bh_routing import cli

    cuda = torch.cuda.is_available() and "--device" in args and args[args.index("--device") + 1].startswith("cuda")
    if cuda and cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(cap_gib * 2**30 / total)
    times: dict[str, float] = {}
    original = pipeline.compute_step

    def timed(step, ctx, **kw):
        start = time.perf_counter()
        try:
            return original(step, ctx, **kw)
        finally:
            if cuda:
                torch.cuda.synchronize()
            times[step.name] = round(time.perf_counter() - start, 2)

    pipeline.compute_step = timed
    sys.argv = ["bh-routing", *args[:1], "--model", model_dir, "--out", out_dir, *args[1:]]
    start = time.perf_counter()
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = {"args": args, "exit_code": code, "wall_s": round(time.perf_counter() - start, 1), "step_s": times,
           "cap_gib": cap_gib if cuda else None}
    if cuda:
        free, total = torch.cuda.mem_get_info()
        out.update(max_allocated=torch.cuda.max_memory_allocated(), max_reserved=torch.cuda.max_memory_reserved(),
                   context=max(0, total - free - torch.cuda.memory_reserved() - int(os.environ.get("BH_T4_IN_USE", "0"))),
                   total=total, gpu=torch.cuda.get_device_name(0))
        out["peak_estimate"] = out["max_reserved"] + out["context"]
    return out


def _run_child(model_dir: Path, out_dir: Path, args: list[str], cap: float | None, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", str(model_dir), str(out_dir), json.dumps(args), json.dumps(cap)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    found = [ln[len(MARK):] for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if not found:
        return {"args": args, "exit_code": proc.returncode, "error": " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])}
    row = json.loads(found[-1])
    row["stderr_tail"] = [ln for ln in proc.stderr.splitlines() if ln.startswith(("device ", "out of memory", "error:"))][-5:]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="the JSON written (required)")
    ap.add_argument("--full-run", action="store_true", help="also time the full default run per step")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        model_dir, out_dir, run_args, cap = args.child
        print(MARK + json.dumps(child(model_dir, out_dir, json.loads(run_args), json.loads(cap))), flush=True)
        return 0
    if args.out is None:
        ap.error("the following arguments are required: --out")
    import torch

    import bench_peakmem
    from bh_routing.models.memory import format_plan, plan, read_config

    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="bh-t4-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    env = dict(os.environ)
    try:
        saved = bench_peakmem.save_model(folder / "model", device=device, tiny=args.dry_run)
        if device == "cuda":
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info()
            env["BH_T4_IN_USE"] = str(total - free)
        # the dry run: `calibrate` (one step) at --quick sizes, to keep the test suite's time
        command = ["calibrate", "--quick", "--eval-sequences", "2"] if args.dry_run else ["run"]
        t4 = [command[0], "--config", "colab-t4", "--dtype", "float16", "--experts-backend", "eager", "--device", device,
              *command[1:]]
        from bh_routing.models.device import GPUS

        t4_total = GPUS["t4"].total_bytes
        predicted = plan(read_config(str(folder / "model")), name="Tesla T4 (emulated)", capability=(7, 5),
                         total_bytes=t4_total, memory_fraction=T4_CAP_GIB * 2**30 / t4_total, dtype="float16",
                         experts_backend="eager", seq_len=64 if args.dry_run else 256)
        print(format_plan(predicted))
        rows = [dict(_run_child(folder / "model", folder / "t4", t4, None if args.dry_run else T4_CAP_GIB, env), name="t4-emulation")]
        if args.full_run:
            full = [command[0], "--device", device, *command[1:]]
            rows.append(dict(_run_child(folder / "model", folder / "full", full, None, env), name="full-run"))
        for r in rows:
            peak = f", peak {r['peak_estimate'] / 2**30:.2f} GiB (allocated {r['max_allocated'] / 2**30:.2f})" if "peak_estimate" in r else ""
            print(f"{r['name']}: exit {r['exit_code']}, {r.get('wall_s', 0):.0f} s{peak}; steps {r.get('step_s')} {r.get('error', '')}")
        doc = {"device": device, "dry_run": args.dry_run, "model": saved, "plan": predicted, "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        return 0 if all(r["exit_code"] == 0 for r in rows) else 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
