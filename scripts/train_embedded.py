"""Train the embedded tiny OLMoE on CPU and export it into the package.

Architecture: transformers ``OlmoeForCausalLM`` with OLMoE's routing (64 experts, top-8,
``norm_topk_prob=False``) and OLMoE's load-balancing loss (``output_router_logits=True``,
``router_aux_loss_coef=0.01``), scaled down (hidden 128, 4 layers, expert intermediate 64,
vocab 4096). Data: the token arrays written by ``scripts/prepare_corpus.py``; every batch holds
the same number of random windows from each domain (prose, code).

Every ``--eval-every`` steps the held-out loss (fixed windows of both domains) is printed;
every ``--ckpt-every`` steps model, optimiser, scheduler and RNG state go to
``--ckpt-dir/last.pt``; ``--resume`` continues from there bit-for-bit in the data order.
At the end (or when ``--max-minutes`` is reached) the model is exported with ``save_pretrained``
to ``src/bh_routing/embedded/olmoe-tiny/`` together with the tokenizer, and a ``training_log.json``
(throughput, wall-clock time, losses) is written next to the checkpoint.

Usage::

    python scripts/train_embedded.py --steps 2000 --threads 1
    python scripts/train_embedded.py --steps 2000 --threads 1 --resume
    python scripts/train_embedded.py --measure 60      # throughput only, no export
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
EXPORT_DIR = ROOT / "src" / "bh_routing" / "embedded" / "olmoe-tiny"
DOMAINS = ("prose", "code")


def build_config(tok, args):
    from transformers import OlmoeConfig

    return OlmoeConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,  # model width
        intermediate_size=args.expert_hidden,  # width of each expert's SwiGLU MLP
        num_hidden_layers=args.layers,  # every layer is an MoE layer, as in OLMoE
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        num_experts=64,  # as OLMoE-1B-7B
        num_experts_per_tok=8,  # top-8, as OLMoE-1B-7B
        norm_topk_prob=False,  # as OLMoE-1B-7B
        output_router_logits=True,  # adds the load-balancing loss during training
        router_aux_loss_coef=0.01,  # as OLMoE-1B-7B
        max_position_embeddings=args.seq_len * 4,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        experts_implementation=args.experts_implementation,
    )


class Batches:
    """Random windows of ``seq_len + 1`` tokens, half of each batch from each domain."""

    def __init__(self, arrays: dict[str, np.ndarray], batch: int, seq_len: int, seed: int):
        self.arrays = {d: torch.from_numpy(a.astype(np.int64)) for d, a in arrays.items()}
        self.batch, self.seq_len = batch, seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        rows = []
        per = self.batch // len(self.arrays)
        for a in self.arrays.values():
            starts = torch.randint(0, len(a) - self.seq_len - 1, (per,), generator=self.gen)
            rows += [a[s : s + self.seq_len + 1] for s in starts.tolist()]
        return torch.stack(rows)  # (B, L+1)


def eval_windows(arr: np.ndarray, seq_len: int, n: int) -> torch.Tensor:
    """``n`` evenly spaced, non-overlapping windows (fixed, so losses are comparable across steps)."""
    t = torch.from_numpy(arr.astype(np.int64))
    n = min(n, (len(t) - 1) // (seq_len + 1))
    stride = (len(t) - seq_len - 1) // max(n, 1)
    return torch.stack([t[i * stride : i * stride + seq_len + 1] for i in range(n)])  # (n, L+1)


@torch.no_grad()
def held_out_loss(model, windows: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    out = {}
    for d, w in windows.items():
        losses = []
        for chunk in w.split(16):
            logits = model(input_ids=chunk[:, :-1], output_router_logits=False).logits  # (b, L, V)
            losses.append(
                torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
                )
            )
        out[d] = float(sum(losses) / w[:, 1:].numel())
    model.train()
    return out


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus")
    ap.add_argument("--ckpt-dir", type=Path, default=ROOT / "checkpoints" / "embedded")
    ap.add_argument("--export-dir", type=Path, default=EXPORT_DIR)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (half per domain)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--expert-hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-windows", type=int, default=32, help="held-out windows per domain")
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--experts-implementation", default="grouped_mm")
    ap.add_argument("--save-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--max-minutes", type=float, default=None, help="stop early and export")
    ap.add_argument("--measure", type=float, default=None, help="only measure tokens/s for N seconds")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoTokenizer, OlmoeForCausalLM

    tok = AutoTokenizer.from_pretrained(args.corpus / "tokenizer")
    train = {d: np.load(args.corpus / f"train_{d}.npy") for d in DOMAINS}
    heldout = {d: eval_windows(np.load(args.corpus / f"heldout_{d}.npy"), args.seq_len, args.eval_windows) for d in DOMAINS}

    config = build_config(tok, args)
    model = OlmoeForCausalLM(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    batches = Batches(train, args.batch, args.seq_len, args.seed)
    step, log, elapsed_before = 0, {"evals": [], "train_loss": []}, 0.0
    ckpt_path = args.ckpt_dir / "last.pt"
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        batches.gen.set_state(ck["data_rng"])
        torch.set_rng_state(ck["torch_rng"])
        step, elapsed_before = int(ck["step"]), float(ck["elapsed"])
        log = json.loads(ck["log"])
        print(f"resumed at step {step}")

    def save_ckpt(elapsed: float) -> None:
        args.ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "data_rng": batches.gen.get_state(),
             "torch_rng": torch.get_rng_state(), "step": step, "elapsed": elapsed, "log": json.dumps(log)},
            tmp,
        )
        os.replace(tmp, ckpt_path)

    tokens_per_step = args.batch * args.seq_len
    t0 = time.perf_counter()
    t_measure = None
    pbar = tqdm(total=args.steps, initial=step, desc="train", mininterval=10)
    while step < args.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        x = batches.next()
        out = model(input_ids=x[:, :-1], output_router_logits=True)  # aux_loss: OLMoE load balancing
        logits = out.logits  # (B, L, V)
        lm = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss = lm + config.router_aux_loss_coef * out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        pbar.update(1)
        elapsed = elapsed_before + time.perf_counter() - t0
        if step % 10 == 0:
            log["train_loss"].append([step, round(lm.item(), 4), round(out.aux_loss.item(), 4)])
            pbar.set_postfix(loss=f"{lm.item():.3f}", aux=f"{out.aux_loss.item():.3f}",
                             tok_s=f"{(step * tokens_per_step) / max(elapsed, 1e-9):.0f}")
        if args.measure is not None:
            if step == 3:
                t_measure = (time.perf_counter(), step)
            if t_measure and time.perf_counter() - t_measure[0] >= args.measure:
                dt = time.perf_counter() - t_measure[0]
                print(json.dumps({"threads": args.threads, "params": n_params,
                                  "tokens_per_s": (step - t_measure[1]) * tokens_per_step / dt,
                                  "s_per_step": dt / (step - t_measure[1])}))
                return
            continue
        if step % args.eval_every == 0 or step == args.steps:
            ev = held_out_loss(model, heldout)
            log["evals"].append({"step": step, "elapsed_s": round(elapsed, 1), **{d: round(v, 4) for d, v in ev.items()}})
            tqdm.write(f"step {step} elapsed {elapsed:.0f}s held-out loss " + " ".join(f"{d}={v:.4f}" for d, v in ev.items()))
        if step % args.ckpt_every == 0 or step == args.steps:
            save_ckpt(elapsed)
        if args.max_minutes is not None and elapsed > 60 * args.max_minutes:
            tqdm.write(f"time limit reached at step {step}")
            save_ckpt(elapsed)
            break
    pbar.close()
    elapsed = elapsed_before + time.perf_counter() - t0

    log.update({
        "steps": step, "planned_steps": args.steps, "tokens_seen": step * tokens_per_step,
        "train_wall_s": round(elapsed, 1), "tokens_per_s": round(step * tokens_per_step / elapsed, 1),
        "threads": args.threads, "experts_implementation": args.experts_implementation,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "params": n_params, "args": {k: str(v) for k, v in vars(args).items()},
    })
    try:
        with open("/proc/cpuinfo") as f:
            log["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    (args.ckpt_dir / "training_log.json").write_text(json.dumps(log, indent=1))

    # export: weights in --save-dtype, config without the training-only router-logit output
    model.eval()
    model.config.output_router_logits = False
    model.to(getattr(torch, args.save_dtype))
    args.export_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.export_dir)
    tok.save_pretrained(args.export_dir)
    summary = {k: log[k] for k in ("steps", "planned_steps", "tokens_seen", "train_wall_s", "tokens_per_s", "threads", "cpu")}
    summary["final_eval"] = log["evals"][-1] if log["evals"] else None
    (args.export_dir / "training_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
