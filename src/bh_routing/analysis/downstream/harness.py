"""Running lm-eval on the model under one routing strategy: metrics, expert counts, per-document results.

The model sits inside a routing context (``patched(model, strategy, mode="patch")`` for the
transformers backend, :func:`bh_routing.vllm.patched` for the vLLM one) while
``lm_eval.simple_evaluate`` scores the task, so every MoE layer routes with the strategy; the
Recorder counts the experts.
Mean experts per token: lm-eval calls the model without an attention mask; with ``batch_size > 1``
the right-padding positions of a batch are routed and counted too (they do not change the scores).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ...core import Strategy

CORRECTNESS_METRICS = ("acc", "acc_norm", "acc_bytes", "exact_match", "acc_mutual_info")
ROLLING_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def number(x):
    """A finite float (bools as 0/1), or None."""
    if isinstance(x, (bool, np.bool_)):
        return float(x)
    if isinstance(x, (int, float, np.integer, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return None


def _metrics(row: Mapping, flt: str) -> dict:
    """lm-eval's result row ("acc,none": …, "acc_stderr,none": …) -> {"acc": …, "acc_stderr": …}."""
    out = {}
    for key, value in row.items():
        if "," not in key:
            continue
        name, f = key.split(",", 1)
        if f == flt:
            out[name] = number(value)
    return out


def _filter_of(row: Mapping) -> str | None:
    filters = [k.split(",", 1)[1] for k in row if "," in k]
    if not filters:
        return None
    return "none" if "none" in filters else filters[0]


def _samples(rows: list[dict], output_type: str, flt: str) -> dict:
    """Per-document results, sorted by doc id: correctness and/or log-likelihood."""
    rows = sorted((r for r in rows if r.get("filter", flt) == flt), key=lambda r: r["doc_id"])
    out: dict[str, list] = {"doc_id": [int(r["doc_id"]) for r in rows]}
    if output_type == "loglikelihood_rolling":
        out["loglikelihood"] = [float(r["filtered_resps"][0]) for r in rows]
        for name, key in (("word_perplexity", "words"), ("byte_perplexity", "bytes")):
            if rows and isinstance(rows[0].get(name), (tuple, list)):
                out[key] = [int(r[name][1]) for r in rows]
        return out
    for name in CORRECTNESS_METRICS:
        if rows and name in rows[0]:
            out[name] = [float(r[name]) for r in rows]
    if output_type == "multiple_choice":
        lls = []
        for r in rows:
            target = r.get("target")
            ok = isinstance(target, (int, np.integer)) and 0 <= int(target) < len(r["filtered_resps"])
            lls.append(float(r["filtered_resps"][int(target)][0]) if ok else None)
        out["loglikelihood"] = lls  # of the right answer
    elif output_type == "loglikelihood":
        out["loglikelihood"] = [float(r["filtered_resps"][0][0]) for r in rows]
    return out


def run_one(lm, routing, strategy: Strategy, spec: str, plan: dict, tm, *, limit, seed, bootstrap_iters) -> dict:
    """lm-eval's scores of task/group ``spec`` with every MoE layer routing with ``strategy``.

    ``routing(strategy)`` is the context manager that routes the model lm-eval calls and yields a
    Recorder.
    """
    from lm_eval import simple_evaluate

    samples = None
    if any(leaf["docs"] is not None for leaf in plan["leaves"].values()):
        samples = {name: leaf["docs"] for name, leaf in plan["leaves"].items()}
    with routing(strategy) as rec:
        res = simple_evaluate(
            model=lm, tasks=[spec], limit=None if samples else limit, samples=samples, log_samples=True,
            task_manager=tm, bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
        )
    routing = {
        "mean_experts_per_token": number(rec.mean_experts_per_token()),
        "mean_k_per_layer": [number(v) for v in rec.mean_k_per_layer().tolist()],
        "routed_tokens": int(rec.tokens_per_layer()[0]),
    }
    leaves = {}
    for name, leaf in plan["leaves"].items():
        row = res["results"][name]
        flt = _filter_of(row) or "none"
        leaves[name] = {
            "filter": flt,
            "metrics": _metrics(row, flt),
            **routing,
            "samples": _samples(res["samples"].get(name, []), leaf["output_type"], flt),
        }
    groups = {}
    for g in plan["groups"]:
        row = res["results"].get(g, {})
        flt = _filter_of(row) or "none"
        groups[g] = {"filter": flt, "metrics": _metrics(row, flt), **routing}
    return {"leaves": leaves, "groups": groups}
