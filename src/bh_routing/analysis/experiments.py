"""The analyses: each a function of (model, tokenizer, texts, config) returning JSON-able results."""

from __future__ import annotations

import re

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import BH, Calibration, CalibrationBuilder, Strategy, TopK, TopP, WeightRatio
from ..models import model_fingerprint, patched
from .config import RunConfig
from .evaluate import StrategyRun, evaluate_strategy, sequence_nll


#: p-value methods whose p-values change with the temperature (the others are scale-free).
SCALE_DEPENDENT = ("calibrated",)


def parse_variant(variant: str) -> tuple[str, str, bool]:
    """``"calibrated-router-wide"`` -> (p-value method, selection, wide): see config.VARIANTS."""
    method, *flags = variant.split("-")
    return method, "router" if "router" in flags else "pvalue", "wide" in flags


def wide_max_k(routing) -> int:
    """max_k of the "-wide" variants: twice the model's top-k, at most the number of experts."""
    return min(2 * routing.top_k, routing.num_experts)


def bh_strategy(
    cfg: RunConfig, variant: str, calibration: Calibration | None, *, alpha=None, temperature=1.0, wide_k=None
) -> BH:
    """The BH strategy of a variant (``"calibrated"``, ``"calibrated-router"``, ``"empirical-wide"``, …)."""
    method, selection, wide = parse_variant(variant)
    if wide and wide_k is None:
        raise ValueError(f"variant {variant!r} needs wide_k (max_k above the model's top-k)")
    return BH(
        cfg.alpha if alpha is None else alpha,
        temperature=temperature,
        min_k=cfg.min_k,
        max_k=wide_k if wide else cfg.max_k,
        pvalues=method,
        calibration=None if method == "empirical" else calibration,
        selection=selection,
    )


def bh_label(method: str, alpha: float, temperature: float = 1.0) -> str:
    t = "" if temperature == 1.0 else f", T={temperature:g}"
    return f"BH-{method}(α={alpha:g}{t})"


# ---------------------------------------------------------------------------- calibration
@torch.no_grad()
def fit_calibration(
    model, sequences: torch.Tensor, *, routing, null: str, reservoir_size: int, seed: int, model_name: str
) -> Calibration:
    """Record the router logits of ``sequences`` (N, S) with the model routing as usual; fit the null.

    ``routing``: the model's ``ModelInfo`` (``inspect_model``), for its layers, experts and top-k.
    """
    top_k = routing.top_k
    builder = CalibrationBuilder(
        num_layers=routing.num_moe_layers,
        num_experts=routing.num_experts,
        top_k=top_k,
        null=null,
        reservoir_size=reservoir_size,
        seed=seed,
    )
    device = next(model.parameters()).device
    # analyze mode with a TopK(k) strategy records the real logits without changing the model
    with patched(model, TopK(top_k), mode="analyze", record_tokens=True) as rec:
        for row in tqdm(sequences, desc="calibration", leave=False):
            rec.reset()
            model(input_ids=row.unsqueeze(0).to(device))
            for layer in range(builder.num_layers):
                builder.update(layer, rec.tokens(layer)["logits"])
    return builder.finalize(model_name=model_name, model_fingerprint=model_fingerprint(model))


# ---------------------------------------------------------------------------- sweeps
def alpha_sweep(model, seqs, cfg: RunConfig, calibration, *, wide_k: int | None = None) -> list[dict]:
    """For each BH variant and α: patch-mode experts per token and per-sequence loss."""
    runs = []
    grid = [(m, a) for m in cfg.pvalues for a in cfg.alphas]
    for method, alpha in tqdm(grid, desc="α sweep"):
        s = bh_strategy(cfg, method, calibration, alpha=alpha, wide_k=wide_k)
        runs.append(evaluate_strategy(model, seqs, s, label=bh_label(method, alpha), family=f"bh-{method}", param=alpha).to_dict())
    return runs


def temperature_sweep(model, seqs, cfg: RunConfig, calibration) -> list[dict]:
    """For each scale-dependent BH variant (calibrated null; not "-wide") and temperature at α = cfg.alpha.

    The empirical and standardized nulls are left out: they standardise each token's logits by
    its own median and MAD, so a temperature changes none of their p-values (tested in
    tests/core/test_pvalues.py) and sweeping them would only repeat one run per temperature.
    """
    runs = []
    grid = [(m, t) for m in cfg.pvalues if parse_variant(m)[0] in SCALE_DEPENDENT and not parse_variant(m)[2]
            for t in cfg.temperatures]
    for method, t in tqdm(grid, desc="temperature sweep"):
        s = bh_strategy(cfg, method, calibration, temperature=t)
        run = evaluate_strategy(model, seqs, s, label=bh_label(method, cfg.alpha, t), family=f"bh-{method}", param=t)
        runs.append(run.to_dict())
    return runs


def baseline_frontier(model, seqs, cfg: RunConfig, *, top_k: int) -> list[dict]:
    """TopK (k = 1..K, K = the model's ``top_k``), TopP and WeightRatio sweeps in patch mode, for the Pareto frontier."""
    k_model = top_k
    max_k = cfg.max_k
    items: list[tuple[str, float, Strategy, str]] = [(f"TopK(k={k})", k, TopK(k), "topk") for k in range(1, k_model + 1)]
    if "topp" in cfg.strategies:
        items += [(f"TopP(p={p:g})", p, TopP(p, min_k=cfg.min_k, max_k=max_k), "topp") for p in cfg.topp_values]
    if "weight_ratio" in cfg.strategies:
        items += [(f"WeightRatio(β={b:g})", b, WeightRatio(b, min_k=cfg.min_k, max_k=max_k), "weight_ratio") for b in cfg.ratio_values]
    runs = []
    for label, param, s, fam in tqdm(items, desc="baselines"):
        runs.append(evaluate_strategy(model, seqs, s, label=label, family=fam, param=param).to_dict())
    return runs


# ---------------------------------------------------------------------------- prompts
def topk_and_bh(top_k: int, cfg: RunConfig, calibration) -> tuple[TopK, BH]:
    """The two strategies the prompt analyses compare: the model's own top-k and the report's BH."""
    return TopK(top_k), bh_strategy(cfg, cfg.bh_pvalues, calibration)


def _tokenized(model, tokenizer, prompts: dict[str, str], desc: str):
    """(label, prompt, input ids (1, T) on the model's device) for each prompt, with a progress bar."""
    device = next(model.parameters()).device
    for name, prompt in tqdm(list(prompts.items()), desc=desc):
        yield name, prompt, tokenizer(prompt, return_tensors="pt").input_ids.to(device)


@torch.no_grad()
def baseline_inference(model, tokenizer, cfg: RunConfig, calibration, prompts: dict[str, str], *, top_k: int) -> list[dict]:
    """Greedy continuations of the baseline prompts under TopK(K) and BH, with experts per token."""
    out = []
    strategies = dict(zip(("TopK", "BH"), topk_and_bh(top_k, cfg, calibration)))
    for name, prompt, ids in _tokenized(model, tokenizer, prompts, "baseline inference"):
        row = {"prompt_label": name, "prompt": prompt}
        for sname, s in strategies.items():
            with patched(model, s, mode="patch") as rec:
                gen = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.new_tokens,
                    do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
                row[sname] = {
                    "continuation": tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True),
                    "mean_experts_per_token": rec.mean_experts_per_token(),
                    "strategy": s.describe(),
                }
        out.append(row)
    return out


def token_category(token: str, *, at_start: bool = False) -> str:
    """A coarse kind for a decoded token; ``at_start``: the first token of the text starts a word."""
    t = token.strip()
    if not t:
        return "whitespace"
    if re.fullmatch(r"\d+([.,]\d+)?", t):
        return "number"
    if re.fullmatch(r"[A-Za-z]+", t):
        return "word-start" if token[:1].isspace() or at_start else "word-piece"
    if re.fullmatch(r"[^\w\s]+", t):
        return "punctuation"
    return "mixed"


@torch.no_grad()
def token_level(model, tokenizer, cfg: RunConfig, calibration, sentence: str) -> dict:
    """Experts per token (mean over MoE layers, and per layer) for one sentence, with token kinds."""
    device = next(model.parameters()).device
    ids = tokenizer(sentence, return_tensors="pt").input_ids.to(device)
    s = bh_strategy(cfg, cfg.bh_pvalues, calibration)
    with patched(model, s, mode="patch", record_tokens=True) as rec:
        model(input_ids=ids)
        per_layer = torch.stack([rec.tokens(l)["counts"] for l in range(rec.num_layers)]).float()  # (L, T)
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    kinds = [token_category(t, at_start=i == 0) for i, t in enumerate(tokens)]
    mean = per_layer.mean(dim=0)  # (T,)
    by_kind: dict[str, list[float]] = {}
    for kind, k in zip(kinds, mean.tolist()):
        by_kind.setdefault(kind, []).append(k)
    return {
        "sentence": sentence,
        "strategy": s.describe(),
        "tokens": tokens,
        "kinds": kinds,
        "mean_k": mean.tolist(),
        "k_per_layer": per_layer.tolist(),
        "mean_k_by_kind": {k: {"mean": float(np.mean(v)), "n": len(v)} for k, v in sorted(by_kind.items())},
    }


@torch.no_grad()
def comparative(model, tokenizer, cfg: RunConfig, calibration, prompts: dict[str, str], *, top_k: int) -> list[dict]:
    """Per prompt: TopK(K) vs BH mean experts per token and next-token loss (teacher forcing)."""
    rows = []
    strategies = dict(zip(("topk", "bh"), topk_and_bh(top_k, cfg, calibration)))
    for name, prompt, ids in _tokenized(model, tokenizer, prompts, "comparative"):
        if ids.shape[1] < 2:
            raise ValueError(f"prompt {name!r} has fewer than 2 tokens: {prompt!r}")
        row = {"prompt_label": name, "prompt": prompt, "tokens": ids.shape[1]}
        for sname, s in strategies.items():
            with patched(model, s, mode="patch") as rec:
                nll, n = sequence_nll(model, ids)
                row[f"{sname}_mean_experts"] = rec.mean_experts_per_token()
                row[f"{sname}_loss"] = float(nll[0]) / n
        row["expert_reduction_pct"] = 100.0 * (1 - row["bh_mean_experts"] / row["topk_mean_experts"])
        row["loss_change"] = row["bh_loss"] - row["topk_loss"]
        rows.append(row)
    return rows


def as_runs(dicts: list[dict]) -> list[StrategyRun]:
    keep = {k for k in StrategyRun.__dataclass_fields__}
    return [StrategyRun(**{k: v for k, v in d.items() if k in keep}) for d in dicts]
