"""Pairing documents: every strategy against the top-k baseline, document by document.

- correctness (``acc``, ``acc_norm``, 0/1 per document): the exact McNemar test
  (:func:`bh_routing.analysis.stats.mcnemar_exact`);
- rolling log-likelihood (nats per document): :func:`bh_routing.analysis.stats.paired_comparison`
  (paired t, t-interval, Cohen's d_z; Wilcoxon as a robustness check).

All tests of one downstream result (every task, group, strategy and metric) are one family: their
p-values are Holm-adjusted (:func:`bh_routing.analysis.stats.adjust_family`) and the verdicts follow
the one rule of :func:`bh_routing.analysis.stats.decide` (none below 20 documents).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...core import Strategy, TopK
from ..stats import adjust_family, mcnemar_exact, paired_comparison
from .harness import CORRECTNESS_METRICS


def _aligned(sa: dict, sb: dict, key: str, keys_a=None, keys_b=None):
    """Values of ``key`` on the documents both runs scored, in the same order."""
    ka = keys_a if keys_a is not None else sa["doc_id"]
    kb = keys_b if keys_b is not None else sb["doc_id"]
    pos = {k: i for i, k in enumerate(kb)}
    pairs = [(sa[key][i], sb[key][pos[k]]) for i, k in enumerate(ka) if k in pos]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    return np.array([x for x, _ in pairs], float), np.array([y for _, y in pairs], float)


def _paired(name: str, output_type: str, sa: dict, sb: dict, names: tuple[str, str], seed: int, keys=(None, None)) -> list[dict]:
    tests = []
    if output_type == "loglikelihood_rolling":
        a, b = _aligned(sa, sb, "loglikelihood", *keys)
        if len(a):
            t = paired_comparison(a, b, names=names, metric="log-likelihood per document (nats)")
            t["test"], t["task"] = "paired_t_wilcoxon", name
            tests.append(t)
        return tests
    for metric in CORRECTNESS_METRICS:
        if metric in sa and metric in sb:
            a, b = _aligned(sa, sb, metric, *keys)
            if len(a):
                tests.append(mcnemar_exact(a, b, names=names, metric=metric, task=name))
    return tests


def baseline(strategies: Mapping[str, Strategy], top_k: int) -> str | None:
    """The first ``TopK`` with the model's own k, else the first ``TopK``, else None."""
    topk = [n for n, s in strategies.items() if isinstance(s, TopK)]
    exact = [n for n in topk if strategies[n].k == top_k]
    return (exact or topk or [None])[0]


def _group_samples(per_strategy_leaves: dict, leaves: list[str]) -> tuple[dict, list]:
    """Concatenate the leaves' per-document results, keyed by (task, doc id)."""
    cat: dict[str, list] = {}
    keys: list = []
    common = None
    for leaf in leaves:
        s = per_strategy_leaves[leaf]["samples"]
        fields = set(s) - {"doc_id"}
        common = fields if common is None else common & fields
    for leaf in leaves:
        s = per_strategy_leaves[leaf]["samples"]
        keys += [f"{leaf}/{d}" for d in s["doc_id"]]
        for f in common or ():
            cat.setdefault(f, []).extend(s[f])
    cat["doc_id"] = keys
    return cat, keys


def add_paired(result: dict, seed: int) -> None:
    """Paired tests of every strategy against the baseline, per task and per group (in place)."""
    base = result["baseline"]
    for name, t in result["tasks"].items():
        t["paired"] = []
        if base is None:
            continue
        for s in result["strategies"]:
            if s != base:
                t["paired"] += _paired(name, t["output_type"], t["strategies"][s]["samples"], t["strategies"][base]["samples"], (s, base), seed)
    for g, grp in result["groups"].items():
        grp["paired"] = []
        types = {result["tasks"][leaf]["output_type"] for leaf in grp["tasks"]}
        if base is None or len(types) != 1:
            continue
        (otype,) = types
        per = {s: {leaf: result["tasks"][leaf]["strategies"][s] for leaf in grp["tasks"]} for s in result["strategies"]}
        sb, kb = _group_samples(per[base], grp["tasks"])
        for s in result["strategies"]:
            if s != base:
                sa, ka = _group_samples(per[s], grp["tasks"])
                grp["paired"] += _paired(g, otype, sa, sb, (s, base), seed, keys=(ka, kb))
    family = [t for part in (result["tasks"], result["groups"]) for x in part.values() for t in x["paired"]]
    adjust_family(family)
    for t in family:
        if t["test"] == "paired_t_wilcoxon":
            t["verdict"] = f"{t['task']}: {t['verdict']}"
