"""The analyses of the original notebook: functions of (model, sequences or prompts, routing settings) returning JSON-able results."""

from __future__ import annotations

import re

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import BH, Calibration, CalibrationBuilder, TopK
from ..core.families import get_family
from ..models import model_fingerprint, patched
from .settings import RoutingSettings, bh_label, parse_variant, setting_label
from .evaluate import StrategyRun, evaluate_strategy, sequence_nll


#: p-value methods whose p-values change with the temperature (the others are scale-free).
SCALE_DEPENDENT = ("calibrated",)


def wide_max_k(routing) -> int:
    """max_k of the "-wide" variants: twice the model's top-k, at most the number of experts."""
    return min(2 * routing.top_k, routing.num_experts)


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
def alpha_sweep(model, seqs, rs: RoutingSettings, calibration, *, wide_k: int | None = None) -> list[dict]:
    """For each BH variant and α: patch-mode experts per token and per-sequence loss."""
    runs = []
    grid = [(m, a) for m in rs.variants for a in rs.alphas]
    for method, alpha in tqdm(grid, desc="α sweep"):
        s = rs.bh(method, calibration, alpha=alpha, wide_k=wide_k)
        runs.append(evaluate_strategy(model, seqs, s, label=bh_label(method, alpha), family=f"bh-{method}", param=alpha).to_dict())
    return runs


def temperature_sweep(model, seqs, rs: RoutingSettings, calibration) -> list[dict]:
    """For each scale-dependent BH variant (calibrated null; not "-wide") and temperature at α = rs.alpha.

    The empirical and standardized nulls are left out: they standardise each token's logits by
    its own median and MAD, so a temperature changes none of their p-values (tested in
    tests/core/test_pvalues.py) and sweeping them would only repeat one run per temperature.
    """
    runs = []
    grid = [(m, t) for m in rs.variants if parse_variant(m)[0] in SCALE_DEPENDENT and not parse_variant(m)[2]
            for t in rs.temperatures]
    for method, t in tqdm(grid, desc="temperature sweep"):
        s = rs.bh(method, calibration, temperature=t)
        run = evaluate_strategy(model, seqs, s, label=bh_label(method, rs.alpha, t), family=f"bh-{method}", param=t)
        runs.append(run.to_dict())
    return runs


def baseline_frontier(model, seqs, rs: RoutingSettings, *, top_k: int) -> list[dict]:
    """Every non-BH family of ``rs.families`` over its grid (top-k: k = 1..K, K = the model's
    ``top_k``) in patch mode, for the Pareto frontier."""
    families = ("topk", *(f for f in rs.families if f != "topk"))
    items = [(setting_label(f, v), f, v, rs.strategy(f, v)) for f in families for v in rs.grid(f, top_k=top_k)]
    # published settings of a family (its class's ``references``): family "<name>:<reference>", no knob value
    items += [(f"{type(s).__name__}({ref})", f"{f}:{ref}", None, s) for f in families
              for ref, kwargs in get_family(f).references.items() for s in [get_family(f)(**kwargs)]]
    runs = []
    for label, fam, value, s in tqdm(items, desc="baselines"):
        runs.append(evaluate_strategy(model, seqs, s, label=label, family=fam, param=value).to_dict())
    return runs


# ---------------------------------------------------------------------------- prompts
def topk_and_bh(top_k: int, rs: RoutingSettings, calibration) -> tuple[TopK, BH]:
    """The two strategies the prompt analyses compare: the model's own top-k and the report's BH."""
    return TopK(top_k), rs.bh(calibration=calibration)


def _tokenized(model, tokenizer, prompts: dict[str, str], desc: str):
    """(label, prompt, input ids (1, T) on the model's device) for each prompt, with a progress bar."""
    device = next(model.parameters()).device
    for name, prompt in tqdm(list(prompts.items()), desc=desc):
        yield name, prompt, tokenizer(prompt, return_tensors="pt").input_ids.to(device)


@torch.no_grad()
def baseline_inference(model, tokenizer, rs: RoutingSettings, calibration, prompts: dict[str, str], *, top_k: int,
                       new_tokens: int) -> list[dict]:
    """Greedy continuations of the baseline prompts under TopK(K) and BH, with experts per token."""
    out = []
    strategies = dict(zip(("TopK", "BH"), topk_and_bh(top_k, rs, calibration)))
    for name, prompt, ids in _tokenized(model, tokenizer, prompts, "baseline inference"):
        row = {"prompt_label": name, "prompt": prompt}
        for sname, s in strategies.items():
            with patched(model, s, mode="patch") as rec:
                gen = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
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
def token_level(model, tokenizer, rs: RoutingSettings, calibration, sentence: str) -> dict:
    """Experts per token (mean over MoE layers, and per layer) for one sentence, with token kinds."""
    device = next(model.parameters()).device
    ids = tokenizer(sentence, return_tensors="pt").input_ids.to(device)
    s = rs.bh(calibration=calibration)
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
def comparative(model, tokenizer, rs: RoutingSettings, calibration, prompts: dict[str, str], *, top_k: int) -> list[dict]:
    """Per prompt: TopK(K) vs BH mean experts per token and next-token loss (teacher forcing)."""
    rows = []
    strategies = dict(zip(("topk", "bh"), topk_and_bh(top_k, rs, calibration)))
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
