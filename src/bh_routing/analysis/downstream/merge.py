"""Merging the results of sharded downstream runs (one process per GPU) into the whole run's."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .document import SETTINGS, STRATEGY_KEYS, assemble
from .harness import CORRECTNESS_METRICS


def _summarise(output_type: str, samples: dict) -> dict:
    """Task metrics from per-document results, computed as lm-eval computes them."""
    from lm_eval.api.metrics import mean_stderr

    out: dict = {}
    if output_type == "loglikelihood_rolling":
        ll = float(np.sum(samples["loglikelihood"]))
        if "words" in samples:
            out["word_perplexity"] = math.exp(-ll / sum(samples["words"]))
        if "bytes" in samples:
            out["byte_perplexity"] = math.exp(-ll / sum(samples["bytes"]))
            out["bits_per_byte"] = -ll / sum(samples["bytes"]) / math.log(2)
        for m in list(out):
            out[f"{m}_stderr"] = None
        return out
    for m in CORRECTNESS_METRICS:
        if m in samples:
            x = [float(v) for v in samples[m]]
            out[m] = float(np.mean(x))
            out[f"{m}_stderr"] = float(mean_stderr(x)) if len(x) > 1 else None
    return out


def _check_parts(parts: list[dict]) -> int:
    if not parts or any(p.get("shard") is None for p in parts):
        raise ValueError("merge_downstream needs the results of sharded runs (shard=(rank, world_size))")
    world = parts[0]["shard"]["world_size"]
    ranks = sorted(p["shard"]["rank"] for p in parts)
    if ranks != list(range(world)) or any(p["shard"]["world_size"] != world for p in parts):
        raise ValueError(f"need exactly one part per rank 0..{world - 1}, got ranks {ranks}")
    for key in ("tasks_requested", "strategies", "limit", "seed", "baseline", "backend"):
        if any(p.get(key) != parts[0].get(key) for p in parts):
            raise ValueError(f"the parts differ in {key!r}: not shards of one run")
    return world


def _weighted(values, tokens) -> float:
    return sum(v * n for v, n in zip(values, tokens)) / max(sum(tokens), 1)


def _merge_task(name: str, parts: list[dict], strategies) -> dict:
    task = {k: v for k, v in parts[0]["tasks"][name].items() if k not in ("strategies", "paired")}
    task["strategies"] = {}
    for s in strategies:
        runs = [p["tasks"][name]["strategies"][s] for p in parts]
        order = np.argsort(np.concatenate([r["samples"]["doc_id"] for r in runs]), kind="stable")
        samples = {f: [v for r in runs for v in r["samples"][f]] for f in runs[0]["samples"]}
        samples = {f: [vals[i] for i in order] for f, vals in samples.items()}
        if len(set(samples["doc_id"])) != len(samples["doc_id"]):
            raise ValueError(f"{name}: the parts share documents: not disjoint shards")
        tokens = [r["routed_tokens"] for r in runs]
        per_layer = [_weighted([r["mean_k_per_layer"][i] for r in runs], tokens) for i in range(len(runs[0]["mean_k_per_layer"]))]
        metrics = {m: None for m in runs[0]["metrics"]}
        metrics.update(_summarise(task["output_type"], samples))
        task["strategies"][s] = {
            "filter": runs[0]["filter"], "metrics": metrics,
            "mean_experts_per_token": _weighted([r["mean_experts_per_token"] for r in runs], tokens),
            "mean_k_per_layer": per_layer, "routed_tokens": int(sum(tokens)), "samples": samples,
        }
    return task


def _merge_group(g: str, parts: list[dict], tasks: dict, strategies) -> dict:
    from lm_eval.api.metrics import pooled_sample_stderr

    g0 = parts[0]["groups"][g]
    grp = {k: v for k, v in g0.items() if k not in ("strategies", "paired")}
    grp["strategies"] = {}
    for s in strategies:
        members = [tasks[leaf]["strategies"][s] for leaf in g0["tasks"]]
        sizes = [len(leaf["samples"]["doc_id"]) for leaf in members]
        metrics = {m: None for m in g0["strategies"][s]["metrics"]}
        for m in CORRECTNESS_METRICS:
            if m in metrics and all(leaf["metrics"].get(m) is not None for leaf in members):
                metrics[m] = float(np.average([leaf["metrics"][m] for leaf in members], weights=sizes))
                errs = [leaf["metrics"].get(f"{m}_stderr") for leaf in members]
                if all(e is not None for e in errs):
                    metrics[f"{m}_stderr"] = float(pooled_sample_stderr(errs, sizes))
        runs = [p["groups"][g]["strategies"][s] for p in parts]
        tokens = [r["routed_tokens"] for r in runs]
        grp["strategies"][s] = {
            "filter": g0["strategies"][s]["filter"], "metrics": metrics,
            "mean_experts_per_token": _weighted([r["mean_experts_per_token"] for r in runs], tokens),
            "routed_tokens": int(sum(tokens)),
        }
    return grp


def merge_downstream(parts: Sequence[dict]) -> dict:
    """Merge the results of ``evaluate_downstream(..., shard=(r, n))`` for r = 0..n-1 into one.

    Per-document results are concatenated; ``acc``-type metrics and their standard errors, and the
    rolling perplexities, are recomputed as lm-eval computes them (other metrics become None);
    groups are size-weighted means with lm-eval's pooled standard error (``weight_by_size``);
    mean experts per token are weighted by routed tokens; paired tests are recomputed.
    """
    parts = list(parts)
    world = _check_parts(parts)
    strategies = parts[0]["strategies"]
    tasks = {name: _merge_task(name, parts, strategies) for name in parts[0]["tasks"]}
    groups = {g: _merge_group(g, parts, tasks, strategies) for g in parts[0]["groups"]}
    settings = {k: parts[0].get(k) for k in (*SETTINGS, *STRATEGY_KEYS)}  # "backend": None in older parts
    return assemble(settings, shard=None, tasks=tasks, groups=groups, merged_from=world)
