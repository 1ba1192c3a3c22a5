"""Peak memory of `bh-routing run --quick` on the full-size OLMoE-1B-7B model (random weights).

The model: all 16 layers and the full vocabulary of the real config (6.9 B parameters), random
weights (``bench_generation.build_model``) made in bfloat16 on the device, saved with
``save_pretrained`` to a temporary folder (in /dev/shm where there is one) together with the
embedded model's tokenizer (its ids all fall inside the 50,304-token vocabulary). Then
`bh-routing run --quick --model FOLDER --dtype D --device DEVICE` runs once per dtype (bfloat16,
float16), each in a fresh process (``run.py --peak-child``) that reports, after the run:

* ``max_allocated`` - ``torch.cuda.max_memory_allocated()``: the peak of live tensors;
* ``max_reserved`` - ``torch.cuda.max_memory_reserved()``: the peak held by PyTorch's caching
  allocator (what other processes cannot use);
* ``context`` - memory the process holds on the GPU beyond the allocator (the CUDA context and
  libraries): at the end, the device's used memory (``cudaMemGetInfo``) minus the child's reserved
  memory minus what was in use before the child started (the parent process, measured by it);
* ``peak_estimate`` = max_reserved + context: what ``nvidia-smi`` would show at the peak;
* ``peak_rss`` - the process's peak resident CPU memory (``ru_maxrss``); it counts the pages of the
  memory-mapped checkpoint that loading touched, so it is an upper bound of the CPU memory needed.

A T4 (Colab's free GPU) has 16 GB of which about 15.0 GiB can be used: the run fits if
peak_estimate is below that. A T4 (compute capability 7.5) has no bfloat16 tensor cores, so
float16 is the dtype to use there.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import docstring, failed, table, yes

T4_USABLE_GIB = 15.0
DTYPES = ("bfloat16", "float16")
# the float16 run again with PyTorch's expandable segments, which return the caching allocator's
# slack (reserved but unused memory): the setting to try when a GPU is a little too small
EXPANDABLE = ("float16", "expandable_segments:True")
MARK = "PEAK-JSON "
OTHERS_ENV = "BH_PEAKMEM_IN_USE_BEFORE"


def save_model(folder: Path, *, device: str, tiny: bool) -> dict:
    """Build the 16-layer random-weight model, save it and the embedded tokenizer into ``folder``."""
    from bh_routing.embedded import EMBEDDED_MODEL_DIR

    import bench_generation

    start = time.perf_counter()
    config = bench_generation.olmoe_config(layers=16 if not tiny else 2, tiny=tiny)
    model = bench_generation.build_model(config, device=device, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(EMBEDDED_MODEL_DIR / name, folder / name)
    del model
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    weight_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return {"parameters": params, "layers": config.num_hidden_layers, "vocab": config.vocab_size,
            "checkpoint_bytes": weight_bytes, "save_s": time.perf_counter() - start}


def child(dtype: str, model_dir: str, out_dir: str, device: str, *, tiny: bool = False) -> dict:
    """In a fresh process: `bh-routing run --quick` in-process, then its peak memory (see notes).

    ``tiny`` (the CPU dry run, which checks the plumbing, not the numbers): ``bh-routing sweep --quick`` at one α
    with the empirical null on 2 evaluation sequences, instead of the whole quick run (in bfloat16 and float16 a
    CPU takes about 8 minutes over each of them; the run itself is tested in tests/analysis).
    """
    from bh_routing import cli

    command = ["sweep", "--alphas", "0.05", "--temperatures", "1", "--pvalues", "empirical"] if tiny else ["run"]
    argv = ["bh-routing", *command, "--quick", "--model", model_dir, "--dtype", dtype, "--device", device, "--out", out_dir]
    argv += ["--eval-sequences", "2"] if tiny else []
    sys.argv = argv
    start = time.perf_counter()
    try:
        cli.main()
        code = 0
    except SystemExit as exc:  # typer exits with the command's code
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = {"dtype": dtype, "exit_code": code, "wall_s": time.perf_counter() - start,
           "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        reserved = torch.cuda.memory_reserved()
        others = int(os.environ.get(OTHERS_ENV, "0"))  # in use before this process (the parent)
        out.update(
            max_allocated=torch.cuda.max_memory_allocated(),
            max_reserved=torch.cuda.max_memory_reserved(),
            context=max(0, total - free - reserved - others),
            in_use_before=others,
            total=total,
        )
        out["peak_estimate"] = out["max_reserved"] + out["context"]
    return out


def run(log, *, device: str, tiny: bool = False, threads: int | None = None, on_progress=None) -> dict:
    """Save the model, then one child per dtype; ``on_progress(partial result)`` after each child."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="bh-peakmem-", dir=base))
    try:
        saved = save_model(folder / "model", device=device, tiny=tiny)
        log(f"peak memory: saved {saved['parameters'] / 1e9:.2f} B parameters ({saved['checkpoint_bytes'] / 2**30:.1f} GiB) in {saved['save_s']:.0f} s")
        env = dict(os.environ)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info()
            env[OTHERS_ENV] = str(total - free)  # this process's context and cache: not the child's
        rows = []
        variants = [(d, None) for d in DTYPES] + ([EXPANDABLE] if torch.device(device).type == "cuda" else [])
        for dtype, alloc_conf in variants:
            env_d = dict(env, PYTORCH_CUDA_ALLOC_CONF=alloc_conf) if alloc_conf else env
            cmd = [sys.executable, str(Path(__file__).with_name("run.py")), "--peak-child", dtype, str(folder / "model"),
                   str(folder / f"run-{dtype}{'-expandable' if alloc_conf else ''}"), "--device", device]
            # a folder of its own per variant: in a folder of a finished run, `run` would resume its steps
            if threads:
                cmd += ["--threads", str(threads)]
            if tiny:
                cmd += ["--tiny"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env_d)
            found = [line[len(MARK):] for line in proc.stdout.splitlines() if line.startswith(MARK)]
            if proc.returncode != 0 or not found:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                row = {"dtype": dtype, "exit_code": proc.returncode, "error": " / ".join(tail)}
            else:
                row = json.loads(found[-1])
                row["output_tail"] = [ln for ln in proc.stdout.splitlines() if not ln.startswith(MARK)][-3:]
            row["alloc_conf"] = alloc_conf
            if "peak_estimate" in row:
                row["fits_t4"] = row["peak_estimate"] / 2**30 < T4_USABLE_GIB
                log(f"peak memory {dtype} {alloc_conf or ''}: allocated {row['max_allocated'] / 2**30:.2f} GiB, reserved "
                    f"{row['max_reserved'] / 2**30:.2f} GiB, + context {row['context'] / 2**30:.2f} GiB; "
                    f"run {row['wall_s']:.0f} s, exit {row['exit_code']}")
            else:
                log(f"peak memory {dtype}: exit {row.get('exit_code')}, peak RSS {row.get('peak_rss', 0) / 2**20:.0f} MiB {row.get('error', '')}")
            rows.append(row)
            if on_progress is not None:
                on_progress({"device": device, "tiny": tiny, "model": saved, "rows": rows, "t4_usable_gib": T4_USABLE_GIB})
        return {"device": device, "tiny": tiny, "model": saved, "rows": rows, "t4_usable_gib": T4_USABLE_GIB}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- section 7 of BENCHMARKS-gpu.md, and its paragraph of docs/scaling.md


def section(r: dict) -> str:
    """Section 7, peak GPU memory of `bh-routing run --quick`, from the results of benchmarks/run.py."""
    res = r["peakmem"]
    s = ["## 7. Peak GPU memory of `bh-routing run --quick` on the full 16-layer model\n"]
    if "error" in res:
        return "\n".join(s + [failed("peakmem", res)])
    s += [docstring(__doc__), ""]
    mdl = res["model"]
    s.append(
        f"Model: {mdl['layers']} layers, vocabulary {mdl['vocab']:,}, {mdl['parameters'] / 1e9:.2f} B parameters, "
        f"checkpoint {mdl['checkpoint_bytes'] / 2**30:.2f} GiB (bfloat16), saved in {mdl['save_s']:.0f} s.\n"
    )
    gib = 2**30
    rows = []
    for x in res["rows"]:
        if "error" in x:
            rows.append([x["dtype"] + (f" ({x['alloc_conf']})" if x.get("alloc_conf") else ""), x.get("exit_code"), "-", "-", "-", "-", "-", "-", x["error"].replace("|", "/")])
            continue
        gpu_cells = (
            [f"{x['max_allocated'] / gib:.2f}", f"{x['max_reserved'] / gib:.2f}", f"{x['context'] / gib:.2f}",
             f"**{x['peak_estimate'] / gib:.2f}**", yes(x["fits_t4"])]
            if "peak_estimate" in x
            else ["-", "-", "-", "-", "n/a (no GPU)"]
        )
        dtype = x["dtype"] + (f" (`PYTORCH_CUDA_ALLOC_CONF={x['alloc_conf']}`)" if x.get("alloc_conf") else "")
        rows.append([dtype, x["exit_code"], f"{x['wall_s']:.0f}", *gpu_cells, f"{x['peak_rss'] / gib:.2f}"])
    s.append(
        table(
            ["dtype", "exit code", "run s", "max allocated GiB", "max reserved GiB", "context GiB", "peak (nvidia-smi) GiB",
             f"fits a T4 (< {res['t4_usable_gib']} GiB)", "peak RSS GiB"],
            rows,
        )
    )
    s.append(_verdict(res))
    return "\n".join(s) + "\n"


def _fits(x: dict, limit_gib: float) -> str:
    """'fits', 'only just fits (0.01 GiB to spare)' or 'does not fit'."""
    spare = limit_gib - x["peak_estimate"] / 2**30
    if spare < 0:
        return "does not fit"
    return f"only just fits ({spare:.2f} GiB to spare) in" if spare < 0.5 else "fits in"


def _verdict(res: dict) -> str:
    """Plain words for a Colab user, from the rows."""
    gib, limit = 2**30, res["t4_usable_gib"]
    done = [x for x in res["rows"] if "peak_estimate" in x]
    if not done:
        return ""
    parts = []
    for x in done:
        name = x["dtype"] + (f" with `PYTORCH_CUDA_ALLOC_CONF={x['alloc_conf']}`" if x.get("alloc_conf") else "")
        parts.append(f"{name}: {x['peak_estimate'] / gib:.2f} GiB at the peak, which {_fits(x, limit)} a T4's {limit} GiB")
    return (
        "\n**Verdict for a 16 GB T4.** " + "; ".join(parts) + ". Live tensors peak at "
        f"{max(x['max_allocated'] for x in done) / gib:.2f} GiB (the weights are "
        f"{res['model']['checkpoint_bytes'] / gib:.2f} GiB); the rest is the caching allocator's slack and the CUDA "
        "context. Measured on the GPU named above, not on a T4: a T4's context and kernels differ somewhat.\n"
    )


def scaling_paragraphs(r: dict) -> list[str]:
    """What docs/scaling.md, section 4, says of the peak memory (from the run; empty without a measured row)."""
    peak = r.get("peakmem", {})
    done = [x for x in peak.get("rows", []) if "peak_estimate" in x]
    if not done:
        return []
    return [
        "**Memory** (`bh-routing run --quick` on the full 16-layer model; BENCHMARKS-gpu.md section 7): "
        + "; ".join(
            f"{x['dtype']}{' with ' + x['alloc_conf'] if x.get('alloc_conf') else ''} "
            f"{x['peak_estimate'] / 2**30:.2f} GiB at the peak ({_fits(x, peak['t4_usable_gib'])} "
            f"a T4's {peak['t4_usable_gib']} GiB)"
            for x in done
        )
        + (". On a Colab T4 use float16 (no bfloat16 tensor cores there) and, if memory is short, "
           "`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`" if any(x.get("fits_t4") for x in done) else
           ". None fits a 16 GB T4 as measured here (the weights alone take "
           f"{peak['model']['checkpoint_bytes'] / 2**30:.1f} GiB): the full run of OLMoE-1B-7B needs a GPU "
           "with more memory, or the notebook's \"colab-t4\" profile, which `bh-routing plan` predicts to fit a "
           "T4 in float16 with the eager experts backend (a prediction: not yet run on a T4)")
        + "; measured on the GPU above, not on a T4.\n"
    ]
