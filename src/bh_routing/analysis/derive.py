"""Summaries computed from the saved step results (no model needed): tables, statistics, verdicts."""

from __future__ import annotations

import math

import numpy as np

from .stats import bootstrap_ci, load_balance, mean_ci, paired_comparison, perplexity_ci


def _share(hist: list[int], k: int) -> float:
    total = sum(hist)
    return hist[k] / total if total and k < len(hist) else 0.0


def ppl_ratio_ci(run: dict, ref: dict, *, seed: int, n_resamples: int) -> dict:
    """Perplexity of ``run`` over that of ``ref`` on the same sequences, with a paired bootstrap CI.

    ratio = exp(sum_s (nll_s - nll_ref,s) / sum_s tokens_s); resampling sequences keeps the pairs,
    so the between-sequence spread that both runs share cancels.
    """
    diff = np.array(run["seq_nll"]) - np.array(ref["seq_nll"])
    tokens = np.array(run["seq_tokens"], float)
    ci = perplexity_ci(diff, tokens, seed=seed, n_resamples=n_resamples)
    return {"ppl_ratio": ci["ppl"], "ratio_ci_low": ci["ci_low"], "ratio_ci_high": ci["ci_high"]}


def sweep_table(
    runs: list[dict], *, top_k: int, max_k: int, min_k: int, seed: int, n_resamples: int, ref: dict | None = None
) -> list[dict]:
    """One row per run: mean ± sd experts, reduction vs top-k, saturation, perplexity with CI,
    and (with ``ref``, the model's own top-k run) the paired perplexity ratio to it."""
    rows = []
    for r in runs:
        ppl = perplexity_ci(np.array(r["seq_nll"]), np.array(r["seq_tokens"]), seed=seed, n_resamples=n_resamples)
        ratio = ppl_ratio_ci(r, ref, seed=seed, n_resamples=n_resamples) if ref is not None else {}
        rows.append(
            {
                "label": r["label"],
                "family": r["family"],
                "param": r["param"],
                "mean_k": r["mean_k"],
                "sd_k": r["sd_k"],
                "reduction_pct": 100.0 * (1.0 - r["mean_k"] / top_k),
                "share_at_max_k": _share(r["k_histogram"], max_k),
                "share_at_min_k": _share(r["k_histogram"], min_k),
                "compute_fraction": r["compute_fraction"],
                "ppl": ppl["ppl"],
                "ppl_ci_low": ppl["ci_low"],
                "ppl_ci_high": ppl["ci_high"],
                **ratio,
            }
        )
    return rows


def frontier_verdicts(bh_runs: list[dict], baselines: list[dict], *, seed: int, n_resamples: int) -> list[dict]:
    """BH against each baseline family at equal mean k, paired over sequences.

    For a BH run with mean k̄, the baseline's per-sequence loss is interpolated linearly in k
    between the two baseline runs that bracket k̄; d = loss_BH - loss_baseline per sequence.
    BH *wins* when the 95% bootstrap CI of mean d lies below 0, *loses* when above, *ties*
    otherwise; *outside* when the baseline sweep does not reach k̄. Linear interpolation of a
    convex loss-vs-k curve overstates the baseline's loss a little (favours BH) between points.
    """
    out = []
    families = sorted({b["family"] for b in baselines})
    for r in bh_runs:
        loss_bh = np.array(r["seq_nll"]) / np.array(r["seq_tokens"])
        for fam in families:
            pts = sorted((b for b in baselines if b["family"] == fam), key=lambda b: b["mean_k"])
            ks = [b["mean_k"] for b in pts]
            row = {"bh": r["label"], "baseline": fam, "mean_k": r["mean_k"]}
            if not pts or r["mean_k"] < ks[0] - 1e-9 or r["mean_k"] > ks[-1] + 1e-9:
                row.update(verdict="outside", mean_diff=None, ci_low=None, ci_high=None)
                out.append(row)
                continue
            j = int(np.searchsorted(ks, r["mean_k"]))
            a, b = pts[max(j - 1, 0)], pts[min(j, len(pts) - 1)]
            w = 0.0 if b["mean_k"] == a["mean_k"] else (r["mean_k"] - a["mean_k"]) / (b["mean_k"] - a["mean_k"])
            la = np.array(a["seq_nll"]) / np.array(a["seq_tokens"])
            lb = np.array(b["seq_nll"]) / np.array(b["seq_tokens"])
            d = loss_bh - ((1 - w) * la + w * lb)
            lo, hi = bootstrap_ci((d,), lambda x, axis=-1: x.mean(axis=axis), seed=seed, n_resamples=n_resamples)
            verdict = "wins" if hi < 0 else "loses" if lo > 0 else "ties"
            row.update(
                verdict=verdict, mean_diff=float(d.mean()), ci_low=lo, ci_high=hi,
                between=[a["label"], b["label"]], baseline_ppl=float(np.exp(((1 - w) * la + w * lb).mean())),
            )
            out.append(row)
    return out


def statistics(bh_run: dict, topk_run: dict, comparative_rows: list[dict], *, top_k: int, seed: int, n_resamples: int) -> dict:
    """BH vs top-k: per-sequence and per-prompt loss tests, and the expert reduction with its CI."""
    loss_bh = np.array(bh_run["seq_nll"]) / np.array(bh_run["seq_tokens"])
    loss_tk = np.array(topk_run["seq_nll"]) / np.array(topk_run["seq_tokens"])
    seq = paired_comparison(loss_bh, loss_tk, names=(bh_run["label"], topk_run["label"]),
                            metric="loss per token (nats) over sequences", seed=seed)
    prompts = paired_comparison(
        np.array([r["bh_loss"] for r in comparative_rows]), np.array([r["topk_loss"] for r in comparative_rows]),
        names=(bh_run["label"], topk_run["label"]), metric="loss per token (nats) over prompts", seed=seed,
    )
    reduction = mean_ci(100.0 * (1.0 - np.array(bh_run["seq_mean_k"]) / top_k), seed=seed, n_resamples=n_resamples)
    experts = paired_comparison(np.array(bh_run["seq_mean_k"]), np.array(topk_run["seq_mean_k"]),
                                names=(bh_run["label"], topk_run["label"]), metric="experts per token", seed=seed)
    return {
        "sequences": seq,
        "prompts": prompts,
        "experts": experts,
        "expert_reduction_pct": reduction,
        "ppl_bh": perplexity_ci(np.array(bh_run["seq_nll"]), np.array(bh_run["seq_tokens"]), seed=seed, n_resamples=n_resamples),
        "ppl_topk": perplexity_ci(np.array(topk_run["seq_nll"]), np.array(topk_run["seq_tokens"]), seed=seed, n_resamples=n_resamples),
    }


def utilization(topk_run: dict, bh_run: dict) -> dict:
    """Expert frequency (L, E) and load balance under top-k and BH."""
    return {
        name: {"label": r["label"], "expert_counts": r["expert_counts"], **load_balance(np.array(r["expert_counts"]))}
        for name, r in (("topk", topk_run), ("bh", bh_run))
    }


def layers(runs: list[dict]) -> list[dict]:
    """Mean k per MoE layer for each run of the α sweep."""
    return [{"label": r["label"], "family": r["family"], "alpha": r["param"], "mean_k_per_layer": r["mean_k_per_layer"]} for r in runs]


def finite_or_none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
