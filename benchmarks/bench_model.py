"""The whole embedded model: forward time with top-8 against BH (patch) and analyze mode.

The embedded default model (``bh_routing.embedded``, loaded by ``load_model()``): a tiny
OlmoeForCausalLM, 4 MoE layers of 64 experts (intermediate 64, hidden 128), top-8, float32 on
the CPU. Inputs: batches of 8 windows of 256 tokens of the shipped held-out evaluation text.
Its experts are small, so the MoE share of the forward is small and the routing step a larger
share than at the real size: this is the unfavourable case for both patch and analyze mode.
"""

from __future__ import annotations

import torch

from bh_routing import BH
from bh_routing.embedded import EMBEDDED_MODEL_DIR, default_eval_text

from bench_moe import DEFAULT_ALPHA, forward_rounds
from common import docstring, failed, table

BATCH, SEQ_LEN = 8, 256


def available() -> bool:
    return (EMBEDDED_MODEL_DIR / "config.json").is_file()


def load():
    from bh_routing.models import load_model

    model, tokenizer = load_model(device="cpu", dtype="float32")
    return model, tokenizer


def token_windows(tokenizer, num_tokens: int, *, seq_len: int = SEQ_LEN) -> torch.Tensor:
    """(N, seq_len) windows of the held-out text, cycling through it for at least num_tokens tokens."""
    ids = torch.tensor(tokenizer(default_eval_text())["input_ids"])
    windows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)  # (W, S)
    needed = -(-num_tokens // seq_len)
    reps = -(-needed // len(windows))
    return windows.repeat(reps, 1)[:needed]  # (N, S)


def run(quick: bool, log) -> dict:
    model, tokenizer = load()
    batch = token_windows(tokenizer, BATCH * SEQ_LEN)  # (8, 256)
    repeats = 9 if quick else 15
    backends = ("grouped_mm",) if quick else ("grouped_mm", "eager")
    rows = []
    for backend in backends:
        model.set_experts_implementation(backend)
        res = forward_rounds(
            model,
            lambda: model(batch),
            {"patch": (BH(DEFAULT_ALPHA), "patch"), "analyze": (BH(DEFAULT_ALPHA), "analyze")},
            repeats=repeats,
        )
        row = {
            "backend": backend,
            "alpha": DEFAULT_ALPHA,
            "tokens": batch.numel(),
            "topk_s": res["patch"]["topk_s"],
            "patch_s": res["patch"]["bh_s"],
            "patch_ratio": res["patch"]["ratio"],
            "mean_k": res["patch"]["mean_k"],
            "compute_fraction": res["patch"]["compute_fraction"],
            "analyze_s": res["analyze"]["bh_s"],
            "analyze_overhead": res["analyze"]["ratio"] - 1.0,
            "repeats": repeats,
        }
        log(
            f"embedded model {backend}: top-8 {row['topk_s']:.3f} s, BH patch {row['patch_s']:.3f} s "
            f"(ratio {row['patch_ratio']:.3f}, k={row['mean_k']:.2f}), analyze overhead {row['analyze_overhead']:+.3f}"
        )
        rows.append(row)
    head = rows[0]
    return {
        "rows": rows,
        "headline": {
            "model_time_ratio": head["patch_ratio"],
            "model_mean_k": head["mean_k"],
            "analyze_overhead_embedded": head["analyze_overhead"],
        },
    }


def section(r: dict) -> str:
    """The embedded model's part of section 2, from the results of benchmarks/run.py."""
    res = r["model"]
    if "error" in res:
        return failed("model", res)
    s = ["### The whole embedded model\n"]
    if "rows" not in res:
        s.append(f"Not measured: {res.get('skipped', 'skipped')}.")
        return "\n".join(s) + "\n"
    s += [docstring(__doc__), ""]
    s.append("Command: `python benchmarks/run.py --only model --markdown FILE`.\n")
    rows = [
        [
            x["backend"],
            x["alpha"],
            f"{x['tokens']:,}",
            f"{x['mean_k']:.2f}",
            f"{x['compute_fraction']:.3f}",
            f"{x['topk_s']:.3f}",
            f"{x['patch_s']:.3f}",
            f"**{x['patch_ratio']:.3f}**",
            f"{x['mean_k'] / 8 + 0.10:.3f}",
        ]
        for x in res["rows"]
    ]
    s.append(
        table(
            ["backend", "alpha", "tokens", "BH mean k", "pairs computed / top-8", "top-8 s", "BH patch s", "time ratio", "k/8 + 0.10"],
            rows,
        )
    )
    return "\n".join(s) + "\n"
