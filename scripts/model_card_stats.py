"""Measure every number of the embedded model's card and write the card.

Reads the shipped model (``src/bh_routing/embedded/olmoe-tiny``, weights upcast to float32), the
shipped held-out text (``bh_routing.embedded.default_eval_texts()``), the training summary written
by ``scripts/train_embedded.py`` and the train-split token ids written by
``scripts/prepare_corpus.py`` (for the unigram baseline). Writes
``olmoe-tiny/model_card_stats.json`` and renders ``olmoe-tiny/README.md`` from it, so no number in
the card is typed by hand.

Measured, per domain (prose, code) and overall, on the held-out tokens:

- perplexity of the model: every held-out token after the first of each window is predicted
  once, in consecutive windows of ``--seq-len`` + 1 tokens that overlap by one token;
- unigram perplexity of the same target tokens, with add-one (Laplace) smoothing fitted on the
  train split: p(t) = (count(t) + 1) / (N + V);
- router statistics at every MoE layer: mean entropy (nats) of the router softmax over the 64
  experts (uniform: log 64 = 4.159), mean probability mass of the top-8, the share of top-8
  slots each expert receives per domain, the total-variation distance between the prose and code
  shares, and, as a noise floor, the same distance between the two halves of each domain; the
  experts with the largest prose-vs-code share difference;
- the same router statistics for an untrained model of the same architecture (random
  initialisation, seed 0) on the same tokens, as the reference for "trained".

Usage::

    python scripts/model_card_stats.py            # writes model_card_stats.json and README.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bh_routing.analysis.specialization import tv_distance  # noqa: E402
from bh_routing.embedded import EMBEDDED_MODEL_DIR, EVAL_DOMAINS, default_eval_texts  # noqa: E402

DOC_SEP = "\n<|endoftext|>\n"


def token_stream(tok, text: str) -> torch.Tensor:
    """Token ids of a domain's held-out text: every document followed by EOS (as in training)."""
    ids: list[int] = []
    for enc in tok(text.split(DOC_SEP), add_special_tokens=False)["input_ids"]:
        ids += enc + [tok.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def windows(ids: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    """Consecutive windows of ``seq_len + 1`` tokens overlapping by one (the last may be shorter)."""
    return [ids[s : s + seq_len + 1] for s in range(0, len(ids) - 1, seq_len)]


@torch.no_grad()
def measure_domain(model, ids: torch.Tensor, seq_len: int, n_layers: int, n_experts: int, top_k: int):
    """NLL sum, target ids, and per-layer router statistics over one domain's held-out stream."""
    nll, targets = 0.0, []
    entropy_sum = torch.zeros(n_layers, dtype=torch.float64)
    topk_mass_sum = torch.zeros(n_layers, dtype=torch.float64)
    counts_halves = torch.zeros(2, n_layers, n_experts, dtype=torch.float64)  # (half, layer, E)
    n_tok = 0
    ws = windows(ids, seq_len)
    for i, w in enumerate(ws):
        out = model(input_ids=w[None, :-1], output_router_logits=True)
        logits = out.logits[0].float()  # (L, V)
        nll += float(torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum"))
        targets.append(w[1:])
        half = 0 if i < len(ws) / 2 else 1
        for layer, rl in enumerate(out.router_logits):
            p = torch.softmax(rl.double(), dim=-1)  # (L, E)
            entropy_sum[layer] += float(-(p * torch.log(p.clamp_min(1e-300))).sum())
            top_p, top_i = p.topk(top_k, dim=-1)  # (L, k)
            topk_mass_sum[layer] += float(top_p.sum())
            counts_halves[half, layer] += torch.bincount(top_i.reshape(-1), minlength=n_experts).double()
        n_tok += w.numel() - 1
    return {
        "nll_sum": nll,
        "targets": torch.cat(targets),
        "n_tokens": n_tok,
        "entropy_sum": entropy_sum,
        "topk_mass_sum": topk_mass_sum,
        "counts_halves": counts_halves,
    }


def compute(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    cfg = model.config
    L, E, K = cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok

    # parameter counts
    total = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    embed = model.get_input_embeddings().weight.numel()
    lm_head = model.get_output_embeddings().weight.numel()
    active = total - expert + expert * K // E
    shipped = sorted(args.model_dir.glob("*.safetensors"))
    weight_bytes = sum(f.stat().st_size for f in shipped)
    from safetensors import safe_open

    with safe_open(str(shipped[0]), "pt") as f:
        stored_dtype = str(f.get_slice(next(iter(f.keys()))).get_dtype())

    # unigram baseline fitted on the train split (add-one smoothing)
    V = cfg.vocab_size
    counts = np.zeros(V, dtype=np.float64)
    for d in EVAL_DOMAINS:
        counts += np.bincount(np.load(args.corpus / f"train_{d}.npy").astype(np.int64), minlength=V)[:V]
    logp_uni = torch.from_numpy(np.log((counts + 1) / (counts.sum() + V)))

    texts = default_eval_texts()
    per_domain, res, streams = {}, {}, {}
    for d in EVAL_DOMAINS:
        ids = token_stream(tok, texts[d])
        if args.max_tokens:
            ids = ids[: args.max_tokens]
        streams[d] = ids
        r = measure_domain(model, ids, args.seq_len, L, E, K)
        res[d] = r
        n = r["n_tokens"]
        uni_nll = float(-logp_uni[r["targets"]].sum())
        unigram_entropy_of_targets = uni_nll / n
        per_domain[d] = {
            "chars": len(texts[d]),
            "tokens_predicted": n,
            "loss_nats": r["nll_sum"] / n,
            "perplexity": math.exp(r["nll_sum"] / n),
            "unigram_loss_nats": unigram_entropy_of_targets,
            "unigram_perplexity": math.exp(unigram_entropy_of_targets),
            "router_entropy_per_layer": (r["entropy_sum"] / n).tolist(),
            "router_entropy_mean": float((r["entropy_sum"] / n).mean()),
            "top8_mass_per_layer": (r["topk_mass_sum"] / n).tolist(),
            "top8_mass_mean": float((r["topk_mass_sum"] / n).mean()),
            "tv_between_halves_per_layer": tv_distance(r["counts_halves"][0], r["counts_halves"][1]).tolist(),
        }
    n_all = sum(per_domain[d]["tokens_predicted"] for d in EVAL_DOMAINS)
    nll_all = sum(res[d]["nll_sum"] for d in EVAL_DOMAINS)
    uni_all = sum(per_domain[d]["unigram_loss_nats"] * per_domain[d]["tokens_predicted"] for d in EVAL_DOMAINS)
    ent_all = sum(res[d]["entropy_sum"] for d in EVAL_DOMAINS) / n_all  # (L,)
    mass_all = sum(res[d]["topk_mass_sum"] for d in EVAL_DOMAINS) / n_all

    prose_counts = res["prose"]["counts_halves"].sum(0)  # (L, E)
    code_counts = res["code"]["counts_halves"].sum(0)
    share_p = prose_counts / prose_counts.sum(-1, keepdim=True)
    share_c = code_counts / code_counts.sum(-1, keepdim=True)
    tv_domains = tv_distance(prose_counts, code_counts)  # (L,)
    diff = share_p - share_c  # (L, E)
    order = diff.abs().reshape(-1).argsort(descending=True)[: args.top_experts]
    top = []
    for flat in order.tolist():
        layer, e = divmod(flat, E)
        top.append({
            "layer": layer, "expert": e,
            "share_prose": float(share_p[layer, e]), "share_code": float(share_c[layer, e]),
            "prefers": "prose" if diff[layer, e] > 0 else "code",
        })
    all_share = (prose_counts + code_counts) / (prose_counts + code_counts).sum(-1, keepdim=True)

    # reference: the same architecture with random (untrained) weights, seed 0, on the same tokens —
    # how far the statistics above are from what an untrained router already gives
    from transformers import OlmoeForCausalLM

    torch.manual_seed(0)
    ref_model = OlmoeForCausalLM(cfg).float().eval()
    ref = {d: measure_domain(ref_model, streams[d], args.seq_len, L, E, K) for d in EVAL_DOMAINS}
    ref_ent = sum(ref[d]["entropy_sum"] for d in EVAL_DOMAINS) / n_all
    ref_mass = sum(ref[d]["topk_mass_sum"] for d in EVAL_DOMAINS) / n_all
    ref_tv = tv_distance(ref["prose"]["counts_halves"].sum(0), ref["code"]["counts_halves"].sum(0))
    reference = {
        "seed": 0,
        "router_entropy_per_layer": ref_ent.tolist(),
        "router_entropy_mean": float(ref_ent.mean()),
        "top8_mass_per_layer": ref_mass.tolist(),
        "tv_prose_vs_code_per_layer": ref_tv.tolist(),
    }

    summary_path = args.model_dir / "training_summary.json"
    training = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if training is not None and args.training_log.exists():  # full log of the run (gitignored)
        full = json.loads(args.training_log.read_text())
        if full.get("steps") == training.get("steps"):
            training["planned_steps"] = int(full["planned_steps"])
            training["evals"] = full["evals"]
    return {
        "architecture": {
            "class": type(model).__name__,
            "model_type": cfg.model_type,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": L,
            "num_attention_heads": cfg.num_attention_heads,
            "num_experts": E,
            "num_experts_per_tok": K,
            "expert_intermediate_size": cfg.intermediate_size,
            "norm_topk_prob": cfg.norm_topk_prob,
            "router_aux_loss_coef": cfg.router_aux_loss_coef,
            "vocab_size": V,
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings,
        },
        "params": {
            "total": total,
            "expert": expert,
            "embedding": embed,
            "lm_head": lm_head,
            "active_per_token": active,
            "active_per_token_non_embedding": active - embed - lm_head,
            "weights_file_bytes": weight_bytes,
            "stored_dtype": stored_dtype,
        },
        "training": training,
        "eval": {
            "seq_len": args.seq_len,
            "per_domain": per_domain,
            "overall": {
                "tokens_predicted": n_all,
                "loss_nats": nll_all / n_all,
                "perplexity": math.exp(nll_all / n_all),
                "unigram_loss_nats": uni_all / n_all,
                "unigram_perplexity": math.exp(uni_all / n_all),
                "router_entropy_per_layer": ent_all.tolist(),
                "router_entropy_mean": float(ent_all.mean()),
                "uniform_entropy": math.log(E),
                "top8_mass_per_layer": mass_all.tolist(),
                "top8_mass_mean": float(mass_all.mean()),
                "uniform_top8_mass": K / E,
            },
            "domains": {
                "tv_prose_vs_code_per_layer": tv_domains.tolist(),
                "max_expert_share_per_layer": all_share.max(-1).values.tolist(),
                "min_expert_share_per_layer": all_share.min(-1).values.tolist(),
                "experts_never_selected_per_layer": (all_share == 0).sum(-1).tolist(),
                "most_domain_specific_experts": top,
            },
            "reference_random_init": reference,
        },
    }


def fixed(x: float, nd: int = 3) -> str:
    """``x`` with ``nd`` digits after the point (the model card's number format)."""
    return f"{x:.{nd}f}"


def render_card(s: dict) -> str:
    a, p, t, ev = s["architecture"], s["params"], s["training"], s["eval"]
    pd, ov, dm = ev["per_domain"], ev["overall"], ev["domains"]
    L = a["num_hidden_layers"]
    ref = ev["reference_random_init"]
    lines = [
        "# olmoe-tiny — the embedded default model of bh-routing",
        "",
        "A small Mixture-of-Experts language model with the architecture of "
        "allenai/OLMoE-1B-7B-0924 (transformers `OlmoeForCausalLM`: 64 experts, top-8, "
        "`norm_topk_prob=False`, OLMoE's load-balancing loss with coefficient "
        f"{a['router_aux_loss_coef']}), trained from scratch on CPU by `scripts/train_embedded.py` so "
        "that `bh-routing` runs out of the box on a model whose routers are trained. It is a test "
        "subject for routing experiments, not a useful language model.",
        "",
        "All numbers below were written by `scripts/model_card_stats.py` (this file is rendered "
        "by it from `model_card_stats.json`); see *Reproduce* at the end.",
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        f"| class | `{a['class']}` (`model_type={a['model_type']}`) |",
        f"| layers (all MoE) | {L} |",
        f"| hidden size | {a['hidden_size']} |",
        f"| attention heads | {a['num_attention_heads']} |",
        f"| experts per layer | {a['num_experts']} |",
        f"| experts per token (top-k) | {a['num_experts_per_tok']} |",
        f"| expert intermediate size | {a['expert_intermediate_size']} |",
        f"| `norm_topk_prob` | {a['norm_topk_prob']} |",
        f"| vocabulary (byte-level BPE) | {a['vocab_size']} |",
        f"| max positions (trained on 256-token windows) | {a['max_position_embeddings']} |",
        f"| tied embeddings | {a['tie_word_embeddings']} |",
        "",
        "| parameters | count |",
        "|---|---|",
        f"| total | {p['total']:,} |",
        f"| of which experts | {p['expert']:,} |",
        f"| of which input embedding / LM head | {p['embedding']:,} / {p['lm_head']:,} |",
        f"| active per token (non-expert + {a['num_experts_per_tok']}/{a['num_experts']} of experts) | {p['active_per_token']:,} |",
        f"| active per token, without embedding and LM head | {p['active_per_token_non_embedding']:,} |",
        "",
        f"Weights: `model.safetensors`, stored in {p['stored_dtype'].replace('torch.', '')} "
        f"({p['weights_file_bytes'] / 1e6:.1f} MB). `from_pretrained` loads them in that dtype by "
        "default; pass `dtype=torch.float32` to compute in float32 (an exact upcast). The numbers "
        "below are measured in float32.",
        "",
        "## Training data and licence",
        "",
        "Two domains, both from the Debian 12 archive (fetched with `apt-get download`, so "
        "obtainable offline from a package mirror) and both under the **Python Software Foundation "
        "License Version 2**:",
        "",
        "- **prose** — reStructuredText sources of the Python 3.11 documentation "
        "(`python3.11-doc`, `/usr/share/doc/python3.11/html/_sources/**/*.rst.txt`, without "
        "`whatsnew/changelog`);",
        "- **code** — Python 3.11 standard-library modules (`libpython3.11-stdlib`, "
        "`/usr/lib/python3.11/**/*.py`).",
        "",
        "`scripts/prepare_corpus.py` normalises whitespace, splits *by file* into train and "
        "held-out with a hash of the file path, caps each domain, trains the byte-level BPE "
        "tokenizer on the train split only and writes the held-out text shipped as "
        "`bh_routing/embedded/eval_text.txt` (read it with `bh_routing.embedded.default_eval_texts()`). "
        "Its docstring gives the details; `data/corpus/manifest.json` lists package versions, "
        ".deb checksums and every file of every split.",
        "",
    ]
    if t:
        lines += [
            "## Training",
            "",
            f"{t['steps']:,} steps of 16 × 256 tokens, half prose and half code per batch "
            f"({t['tokens_seen']:,} tokens), AdamW with warm-up and cosine decay, loss = "
            f"cross-entropy + {a['router_aux_loss_coef']} × OLMoE load-balancing loss. Wall-clock "
            f"time {t['train_wall_s'] / 60:.1f} min on {t['threads']} CPU thread(s) "
            f"({t['cpu']}, no GPU; {t['tokens_per_s']:,.0f} tokens/s including periodic held-out "
            "evaluation and checkpoints), experts backend `grouped_mm`.",
            "",
        ]
        if t.get("planned_steps") and t["steps"] < t["planned_steps"]:
            lines += [
                f"The run was stopped by its wall-clock limit (`--max-minutes`) at step {t['steps']:,} "
                f"of the {t['planned_steps']:,} planned, so the cosine learning-rate decay was not "
                "completed (the machine was shared with other work and slowed down during the run).",
                "",
            ]
        if t.get("evals"):
            lines += [
                "Held-out loss (nats/token) during training, on the training script's fixed "
                "evaluation windows (32 × 256 tokens per domain):",
                "",
                "| step | minutes | prose | code |",
                "|---|---|---|---|",
            ]
            lines += [f"| {e['step']:,} | {e['elapsed_s'] / 60:.1f} | {fixed(e['prose'])} | {fixed(e['code'])} |" for e in t["evals"]]
            lines.append("")
        elif t.get("final_eval"):
            fe = t["final_eval"]
            lines += [
                f"Held-out loss at the last step, on the training script's fixed evaluation windows: "
                f"prose {fixed(fe['prose'])}, code {fixed(fe['code'])} nats/token.",
                "",
            ]
    lines += [
        "## Held-out quality",
        "",
        f"Every held-out token predicted once (consecutive {ev['seq_len']}-token windows). "
        "Unigram: token frequencies of the train split with add-one smoothing, evaluated on the "
        "same target tokens — the perplexity of a model that ignores context.",
        "",
        "| domain | tokens | loss (nats/token) | perplexity | unigram perplexity |",
        "|---|---|---|---|---|",
    ]
    for d, r in list(pd.items()) + [("all", ov)]:
        lines.append(
            f"| {d} | {r['tokens_predicted']:,} | {fixed(r['loss_nats'])} | {fixed(r['perplexity'], 2)} | "
            f"{fixed(r['unigram_perplexity'], 2)} |"
        )
    lines += [
        "",
        "## Routers are trained",
        "",
        f"Mean entropy of the router softmax over the {a['num_experts']} experts, in nats "
        f"(uniform: log {a['num_experts']} = {fixed(ov['uniform_entropy'])}), and the mean probability "
        f"mass of the top-{a['num_experts_per_tok']} (uniform: {fixed(ov['uniform_top8_mass'])}), on all "
        "held-out tokens:",
        "",
        "| layer | " + " | ".join(str(i) for i in range(L)) + " | mean |",
        "|---|" + "---|" * (L + 1),
        "| router entropy | " + " | ".join(fixed(x) for x in ov["router_entropy_per_layer"])
        + f" | {fixed(ov['router_entropy_mean'])} |",
        "| top-8 mass | " + " | ".join(fixed(x) for x in ov["top8_mass_per_layer"]) + f" | {fixed(ov['top8_mass_mean'])} |",
        "| router entropy, untrained (random init, seed 0) | "
        + " | ".join(fixed(x) for x in ref["router_entropy_per_layer"]) + f" | {fixed(ref['router_entropy_mean'])} |",
        "| top-8 mass, untrained | " + " | ".join(fixed(x) for x in ref["top8_mass_per_layer"])
        + f" | {fixed(sum(ref['top8_mass_per_layer']) / L)} |",
        "",
        "Domain specialisation: the share of top-8 slots each expert receives, per domain. "
        "Total-variation distance between the prose and the code distribution over the 64 "
        "experts, per layer, next to the same distance between the first and second half of "
        "each domain's held-out text (the noise floor):",
        "",
        "| layer | " + " | ".join(str(i) for i in range(L)) + " |",
        "|---|" + "---|" * L,
        "| TV prose vs code | " + " | ".join(fixed(x) for x in dm["tv_prose_vs_code_per_layer"]) + " |",
        "| TV prose vs code, untrained (random init, seed 0) | "
        + " | ".join(fixed(x) for x in ref["tv_prose_vs_code_per_layer"]) + " |",
    ]
    for d in pd:
        lines.append(f"| TV {d} half 1 vs half 2 | " + " | ".join(fixed(x) for x in pd[d]["tv_between_halves_per_layer"]) + " |")
    lines += [
        "| largest expert share (both domains) | " + " | ".join(fixed(x) for x in dm["max_expert_share_per_layer"]) + " |",
        "| smallest expert share (both domains) | " + " | ".join(fixed(x, 4) for x in dm["min_expert_share_per_layer"]) + " |",
        "| experts never in the top-8 on the held-out text | " + " | ".join(str(x) for x in dm["experts_never_selected_per_layer"]) + " |",
        "",
        f"Uniform share: 1/{a['num_experts']} = {fixed(1 / a['num_experts'], 4)}. "
        "The most domain-specific experts (largest |share prose − share code|):",
        "",
        "| layer | expert | share prose | share code | prefers |",
        "|---|---|---|---|---|",
    ]
    for e in dm["most_domain_specific_experts"]:
        lines.append(f"| {e['layer']} | {e['expert']} | {fixed(e['share_prose'], 4)} | {fixed(e['share_code'], 4)} | {e['prefers']} |")
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "python scripts/prepare_corpus.py          # corpus, tokenizer, eval_text.txt (data/ is gitignored)",
        f"python scripts/train_embedded.py --steps {t['planned_steps'] if t and 'planned_steps' in t else 2300} --threads 1 --max-minutes 37"
        "   # exports this folder",
        "python scripts/model_card_stats.py        # model_card_stats.json and this README",
        "```",
        "",
        "Training on a shared CPU is not bit-reproducible across machines and thread counts; the "
        "corpus split and tokenizer are deterministic.",
        "",
        "## Licence",
        "",
        "Weights and tokenizer: trained by the bh-routing authors, distributed with the package "
        "under its licence (Apache-2.0). Training data and the shipped held-out text "
        "(`eval_text.txt`): Python documentation and standard library, © Python Software "
        "Foundation, PSF License Version 2.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=EMBEDDED_MODEL_DIR)
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus", help="for the unigram baseline")
    ap.add_argument("--training-log", type=Path, default=ROOT / "checkpoints" / "embedded" / "training_log.json",
                    help="full log of the training run (planned steps, held-out loss curve), if present")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--top-experts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=None, help="per domain (quick checks only)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    stats = compute(args)
    text = json.dumps(stats, indent=1)
    if args.no_write:
        print(text)
        return
    (args.model_dir / "model_card_stats.json").write_text(text + "\n")
    (args.model_dir / "README.md").write_text(render_card(stats))
    print(json.dumps({k: stats["eval"]["overall"][k] for k in ("perplexity", "unigram_perplexity", "router_entropy_mean")}))
    print("tv prose vs code:", [round(x, 3) for x in stats["eval"]["domains"]["tv_prose_vs_code_per_layer"]])


if __name__ == "__main__":
    main()
