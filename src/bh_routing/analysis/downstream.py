"""Downstream evaluation through EleutherAI's lm-evaluation-harness (``lm_eval``), per strategy.

``evaluate_downstream`` wraps the (already loaded) model in lm-eval's ``HFLM`` once and runs
``lm_eval.simple_evaluate`` for every (strategy, task) with the model inside
``patched(model, strategy, mode="patch")``, so every MoE layer routes with the strategy while the
harness scores the task. Per task it keeps lm-eval's metrics (``acc``, ``acc_norm`` with lm-eval's
standard errors; ``word_perplexity``, ``byte_perplexity``, ``bits_per_byte`` for
``loglikelihood_rolling`` tasks), the mean active experts per token the Recorder counted during
that task, and the per-document results of ``log_samples`` (correctness, log-likelihood), so that
every strategy can be compared with the top-k baseline document by document:

- correctness (``acc``, ``acc_norm``, 0/1 per document): the exact McNemar test, a two-sided
  binomial test (``scipy.stats.binomtest``) of the discordant pairs b (right only under the
  strategy) against c (right only under the baseline), :math:`b \\sim \\mathrm{Bin}(b + c, 1/2)`
  under H0 (McNemar 1947), with the exact CI of the share of discordant documents favouring the strategy;
- rolling log-likelihood (nats per document): :func:`bh_routing.analysis.stats.paired_comparison`
  (paired t, Wilcoxon, Cohen's d_z, bootstrap CI).

Tasks are lm-eval task or group names (``hellaswag``, ``arc_easy``, ``mmlu`` …: their datasets come
from the Hugging Face Hub or its local cache) or tasks of YAML folders passed as ``include_path``.
Two offline tasks ship in :data:`LOCAL_TASKS_DIR`: ``bhr_python_mc`` (42 four-choice questions on
Python) and ``bhr_heldout_rolling`` (rolling log-likelihood of 12 held-out passages of the embedded
model's two domains).

Several processes (one per GPU) can split a run: ``shard=(rank, world_size)`` evaluates documents
``rank, rank + world_size, …`` of every task, and :func:`merge_downstream` merges the parts into
the result of the whole run (metrics recomputed from the per-document results the way lm-eval
computes them). lm-eval's own data parallelism (``accelerate launch``) is not used: ``HFLM`` runs
single-process when it is handed a model object.

Mean experts per token: lm-eval calls the model without an attention mask; with ``batch_size > 1``
the right-padding positions of a batch are routed and counted too (they do not change the scores).
``batch_size=1`` (the default) counts exactly the evaluated tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import stats as sps

from ..core import Strategy, TopK
from .stats import paired_comparison

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
LOCAL_TASKS = ("bhr_python_mc", "bhr_heldout_rolling")
CORRECTNESS_METRICS = ("acc", "acc_norm", "acc_bytes", "exact_match", "acc_mutual_info")
ROLLING_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
SIGNIFICANCE = 0.05



class DownstreamError(ValueError):
    """Bad input to a downstream evaluation (unknown task, missing folder, …); one line for the user."""


# ------------------------------------------------------------------------------------ tasks
def _require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise DownstreamError(
            "lm-evaluation-harness is not installed: pip install 'bh-routing[eval]' (lm-eval, accelerate)"
        ) from None
    return lm_eval


def include_paths(include_path=None) -> list[Path]:
    """The shipped task folder followed by the user's folders (each must exist)."""
    extra = [] if include_path is None else (
        [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    )
    out = [LOCAL_TASKS_DIR]
    for p in extra:
        path = Path(p).expanduser()
        if not path.exists():
            raise DownstreamError(f"include path not found: {p}")
        if not path.is_dir():
            raise DownstreamError(f"include path is not a folder of task YAMLs: {p}")
        out.append(path.resolve())
    return out


@lru_cache(maxsize=4)
def _index(paths: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=defaults)


def _known(tm, name: str) -> bool:
    return name in tm.all_tasks or (name.endswith((".yaml", ".yml")) and Path(name).is_file())


def task_manager(tasks: Sequence[str], include_path=None):
    """An lm-eval ``TaskManager`` that knows every name in ``tasks``, or DownstreamError.

    Only the shipped and given folders are indexed when they hold every task (fast); lm-eval's
    ~15 000 built-in tasks are indexed only when a name is not among them.
    """
    _require_lm_eval()
    paths = tuple(str(p) for p in include_paths(include_path))
    if isinstance(tasks, str) or not tasks:
        raise DownstreamError(f"tasks must be a non-empty list of lm-eval task names, got {tasks!r}")
    local = _index(paths, False)
    if all(_known(local, t) for t in tasks):
        return local
    full = _index(paths, True)
    unknown = [t for t in tasks if not _known(full, t)]
    if unknown:
        import difflib

        name = unknown[0]
        close = difflib.get_close_matches(name, full.all_tasks, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DownstreamError(
            f"unknown lm-eval task {name!r}{hint}; bh-routing's offline tasks: {', '.join(sorted(local.all_tasks))}; "
            f"`lm-eval ls tasks` lists all {len(full.all_tasks)}"
        )
    return full


def _leaves(group_subtasks: Mapping[str, list], name: str) -> list[str]:
    children = group_subtasks.get(name) or []
    if not children:
        return [name]
    return [leaf for c in children for leaf in _leaves(group_subtasks, c)]


def _plan(tm, tasks: Sequence[str], limit, shard) -> dict:
    """Load every task once (datasets included): output types, sizes, and the documents of a shard."""
    from lm_eval.evaluator_utils import get_sample_size

    plan, seen = {}, {}
    for spec in tasks:
        try:
            loaded = tm.load([spec])
        except Exception as exc:  # a dataset that cannot be downloaded, a broken YAML, …
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DownstreamError(f"cannot load lm-eval task {spec!r}: {first}") from None
        leaves = {}
        for name, task in loaded["tasks"].items():
            if name in seen:
                raise DownstreamError(f"task {name!r} is part of both {seen[name]!r} and {spec!r}")
            seen[name] = spec
            n_docs = len(task.eval_docs)
            n = get_sample_size(task, limit) or n_docs
            n = min(n, n_docs)
            docs = None
            if shard is not None:
                rank, world = shard
                if n < world:
                    raise DownstreamError(f"task {name!r} has {n} documents, fewer than the {world} shards")
                docs = list(range(rank, n, world))
            leaves[name] = {"output_type": task.OUTPUT_TYPE, "n_docs": n_docs, "n": n, "docs": docs}
        plan[spec] = {"leaves": leaves, "groups": dict(loaded.get("group_map") or {})}
    return plan


# ------------------------------------------------------------------------- one lm-eval run
def _number(x):
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
            out[name] = _number(value)
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


def _run_one(lm, model, strategy: Strategy, spec: str, plan: dict, tm, *, limit, seed, bootstrap_iters) -> dict:
    from lm_eval import simple_evaluate

    from ..models import patched

    samples = None
    if any(leaf["docs"] is not None for leaf in plan["leaves"].values()):
        samples = {name: leaf["docs"] for name, leaf in plan["leaves"].items()}
    with patched(model, strategy, mode="patch") as rec:
        res = simple_evaluate(
            model=lm, tasks=[spec], limit=None if samples else limit, samples=samples, log_samples=True,
            task_manager=tm, bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
        )
    routing = {
        "mean_experts_per_token": _number(rec.mean_experts_per_token()),
        "mean_k_per_layer": [_number(v) for v in rec.mean_k_per_layer().tolist()],
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


# ---------------------------------------------------------------------------- statistics
def mcnemar_exact(a, b, *, names: tuple[str, str], metric: str, task: str, alpha: float = SIGNIFICANCE) -> dict:
    r"""Exact McNemar test of paired 0/1 outcomes ``a`` (strategy) and ``b`` (baseline).

    Discordant documents: ``only_a`` (right only under ``a``) and ``only_b`` (right only under
    ``b``), m = only_a + only_b. Under H0 (equal accuracy) :math:`\mathrm{only\_a} \sim
    \mathrm{Bin}(m, 1/2)`; two-sided ``scipy.stats.binomtest`` (McNemar 1947, exact form). Also the
    share of the discordant documents that favour ``a`` with its exact (Clopper-Pearson) 95% CI,
    from the same binomial model as the test.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a and b must be 1-D of equal, non-zero length, got {a.shape} and {b.shape}")
    n = len(a)
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    m = only_a + only_b
    ma, mb = float(a.mean()), float(b.mean())
    diff = ma - mb
    p, share, lo, hi = 1.0, None, None, None
    if m:
        test = sps.binomtest(only_a, m, 0.5)
        ci = test.proportion_ci(confidence_level=0.95, method="exact")
        p, share, lo, hi = float(test.pvalue), only_a / m, float(ci.low), float(ci.high)
    sig = p < alpha
    out = {
        "test": "mcnemar_exact", "metric": metric, "a": names[0], "b": names[1], "n": n, "mean_a": ma, "mean_b": mb,
        "mean_diff": diff, "only_a": only_a, "only_b": only_b, "share_a": share, "share_ci_low": lo,
        "share_ci_high": hi, "pvalue": p, "significant": bool(sig),
    }
    if m == 0:
        out["verdict"] = (
            f"{task}, {metric}: {names[0]} and {names[1]} are right and wrong on exactly the same {n} documents "
            f"({ma:.3f} both): no difference to test."
        )
        return out
    detail = (
        f"({ma:.3f} vs {mb:.3f}, difference {diff:+.3f}; they differ on {m} of {n} documents, {only_a} in favour of "
        f"{names[0]}, {only_b} of {names[1]}: share {share:.2f}, exact 95% CI {lo:.2f}-{hi:.2f}; exact McNemar p={p:.3g})"
    )
    if sig:
        out["verdict"] = (
            f"{task}, {metric}: {names[0]} is significantly {'more' if diff > 0 else 'less'} accurate than "
            f"{names[1]} {detail}."
        )
    else:
        out["verdict"] = (
            f"{task}, {metric}: no significant difference between {names[0]} and {names[1]} at {alpha:g} {detail}."
        )
    return out


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
            t["test"] = "paired_t_wilcoxon"
            t["verdict"] = f"{name}: {t['verdict']}"
            tests.append(t)
        return tests
    for metric in CORRECTNESS_METRICS:
        if metric in sa and metric in sb:
            a, b = _aligned(sa, sb, metric, *keys)
            if len(a):
                tests.append(mcnemar_exact(a, b, names=names, metric=metric, task=name))
    return tests


def _baseline(strategies: Mapping[str, Strategy], top_k: int) -> str | None:
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


def _add_paired(result: dict, seed: int) -> None:
    """Paired tests of every strategy against the baseline, per task and per group."""
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


# ------------------------------------------------------------------------------ public API
def _check_shard(shard):
    if shard is None:
        return None
    ok = isinstance(shard, (tuple, list)) and len(shard) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
    if not ok or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise DownstreamError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    return (int(shard[0]), int(shard[1]))


def _check_inputs(strategies, tasks, limit, batch_size) -> None:
    if not isinstance(strategies, Mapping) or not strategies:
        raise DownstreamError("strategies must be a non-empty mapping {name: Strategy}")
    for k, v in strategies.items():
        if not isinstance(k, str) or not isinstance(v, Strategy):
            raise DownstreamError(f"strategies must map names to Strategy objects, got {k!r}: {type(v).__name__}")
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise DownstreamError(f"tasks must be a non-empty list of lm-eval task names, got {tasks!r}")
    if len(set(tasks)) != len(tasks):
        raise DownstreamError(f"tasks must not repeat, got {list(tasks)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0):
        raise DownstreamError(f"limit must be a number > 0 (a count, or a fraction below 1), got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DownstreamError(f"batch_size must be an int >= 1, got {batch_size!r}")


def evaluate_downstream(
    model,
    tokenizer,
    strategies: dict[str, Strategy],
    tasks: list[str],
    *,
    include_path=None,
    limit: int | float | None = None,
    batch_size: int = 1,
    seed: int = 42,
    shard: tuple[int, int] | None = None,
    bootstrap_iters: int = 100000,
) -> dict:
    """Score ``model`` on lm-eval ``tasks`` under each routing strategy; pair every strategy with top-k.

    Parameters
    ----------
    model : transformers MoE causal LM of a supported family (also one dispatched with ``device_map``)
    tokenizer : its tokenizer
    strategies : dict[str, Strategy]
        Name -> strategy, e.g. ``{"topk": TopK(8), "bh-empirical-0.05": BH(0.05)}``. The first
        ``TopK`` with the model's own k (else the first ``TopK``) is the baseline of the paired tests.
    tasks : list[str]
        lm-eval task or group names (``"hellaswag"``, ``"mmlu"``), or names from ``include_path``;
        :data:`LOCAL_TASKS` work offline.
    include_path : str, Path or list, optional
        Extra folders of task YAMLs (the shipped :data:`LOCAL_TASKS_DIR` is always included).
    limit : int or float, optional
        At most this many documents per task (a fraction of each task when below 1), as lm-eval's ``limit``.
    batch_size : int, default 1
        lm-eval's batch size (see the module notes on padding in the expert counts).
    seed : int, default 42
        lm-eval's random, numpy, torch and few-shot seeds, and the bootstrap's.
    shard : (rank, world_size), optional
        Evaluate only documents ``rank, rank + world_size, …`` of every task; merge the parts with
        :func:`merge_downstream`.
    bootstrap_iters : int, default 100000
        lm-eval's bootstrap iterations for the standard errors it bootstraps (not needed for acc).

    Returns
    -------
    dict
        JSON-able: ``tasks[name]`` (``output_type``, ``n``, ``group``, ``strategies[s]`` with lm-eval's
        ``metrics``, ``mean_experts_per_token``, ``mean_k_per_layer``, ``routed_tokens`` and the
        per-document ``samples``; ``paired`` tests against the baseline with a ``verdict``),
        ``groups`` (lm-eval's aggregate of group tasks such as ``mmlu``, with paired tests over all
        their documents), ``strategies``, ``baseline`` and the settings.

    Raises
    ------
    DownstreamError
        Unknown task (with lm-eval's close names), missing include path, bad settings.
    """
    lm_eval = _require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    from ..models import inspect_model

    _check_inputs(strategies, tasks, limit, batch_size)
    shard = _check_shard(shard)
    tm = task_manager(tasks, include_path)
    plan = _plan(tm, tasks, limit, shard)
    top_k = inspect_model(model).top_k
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    runs = {
        s: {spec: _run_one(lm, model, strategy, spec, plan[spec], tm, limit=limit, seed=seed, bootstrap_iters=bootstrap_iters)
            for spec in tasks}
        for s, strategy in strategies.items()
    }
    result = {
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "tasks_requested": list(tasks),
        "include_path": [str(p) for p in include_paths(include_path)[1:]],
        "limit": limit,
        "batch_size": batch_size,
        "seed": seed,
        "bootstrap_iters": bootstrap_iters,
        "shard": None if shard is None else {"rank": shard[0], "world_size": shard[1]},
        "model_top_k": top_k,
        "strategies": {s: strategy.describe() for s, strategy in strategies.items()},
        "baseline": _baseline(strategies, top_k),
        "tasks": {},
        "groups": {},
    }
    for spec in tasks:
        groups = plan[spec]["groups"]
        member = {leaf: g for g in groups for leaf in _leaves(groups, g)}
        for name, leaf in plan[spec]["leaves"].items():
            result["tasks"][name] = {
                "output_type": leaf["output_type"], "n": leaf["n"], "n_docs": leaf["n_docs"], "group": member.get(name),
                "requested_as": spec, "strategies": {s: runs[s][spec]["leaves"][name] for s in strategies},
            }
        for g in groups:
            result["groups"][g] = {
                "tasks": _leaves(groups, g), "requested_as": spec, "top_level": g == spec,
                "strategies": {s: runs[s][spec]["groups"][g] for s in strategies},
            }
    _add_paired(result, seed)
    return result


# --------------------------------------------------------------------------------- merging
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


def merge_downstream(parts: Sequence[dict]) -> dict:
    """Merge the results of ``evaluate_downstream(..., shard=(r, n))`` for r = 0..n-1 into one.

    Per-document results are concatenated; ``acc``-type metrics and their standard errors, and the
    rolling perplexities, are recomputed as lm-eval computes them (other metrics become None);
    groups are size-weighted means with lm-eval's pooled standard error (``weight_by_size``);
    mean experts per token are weighted by routed tokens; paired tests are recomputed.
    """
    from lm_eval.api.metrics import pooled_sample_stderr

    parts = list(parts)
    if not parts or any(p.get("shard") is None for p in parts):
        raise ValueError("merge_downstream needs the results of sharded runs (shard=(rank, world_size))")
    world = parts[0]["shard"]["world_size"]
    ranks = sorted(p["shard"]["rank"] for p in parts)
    if ranks != list(range(world)) or any(p["shard"]["world_size"] != world for p in parts):
        raise ValueError(f"need exactly one part per rank 0..{world - 1}, got ranks {ranks}")
    for key in ("tasks_requested", "strategies", "limit", "seed", "baseline"):
        if any(p[key] != parts[0][key] for p in parts):
            raise ValueError(f"the parts differ in {key!r}: not shards of one run")
    out = {k: v for k, v in parts[0].items() if k not in ("tasks", "groups", "shard")}
    out["shard"] = None
    out["merged_from"] = world
    out["tasks"], out["groups"] = {}, {}
    for name, t0 in parts[0]["tasks"].items():
        task = {k: v for k, v in t0.items() if k not in ("strategies", "paired")}
        task["strategies"] = {}
        for s in out["strategies"]:
            runs = [p["tasks"][name]["strategies"][s] for p in parts]
            fields = runs[0]["samples"].keys()
            order = np.argsort(np.concatenate([r["samples"]["doc_id"] for r in runs]), kind="stable")
            samples = {f: [v for r in runs for v in r["samples"][f]] for f in fields}
            samples = {f: [vals[i] for i in order] for f, vals in samples.items()}
            if len(set(samples["doc_id"])) != len(samples["doc_id"]):
                raise ValueError(f"{name}: the parts share documents: not disjoint shards")
            tokens = [r["routed_tokens"] for r in runs]
            mean_k = sum(r["mean_experts_per_token"] * n for r, n in zip(runs, tokens)) / max(sum(tokens), 1)
            per_layer = [
                sum(r["mean_k_per_layer"][i] * n for r, n in zip(runs, tokens)) / max(sum(tokens), 1)
                for i in range(len(runs[0]["mean_k_per_layer"]))
            ]
            metrics = {m: None for m in runs[0]["metrics"]}
            metrics.update(_summarise(task["output_type"], samples))
            task["strategies"][s] = {
                "filter": runs[0]["filter"], "metrics": metrics, "mean_experts_per_token": mean_k,
                "mean_k_per_layer": per_layer, "routed_tokens": int(sum(tokens)), "samples": samples,
            }
        out["tasks"][name] = task
    for g, g0 in parts[0]["groups"].items():
        grp = {k: v for k, v in g0.items() if k not in ("strategies", "paired")}
        grp["strategies"] = {}
        for s in out["strategies"]:
            leaves = [out["tasks"][leaf]["strategies"][s] for leaf in g0["tasks"]]
            sizes = [len(leaf["samples"]["doc_id"]) for leaf in leaves]
            metrics = {m: None for m in g0["strategies"][s]["metrics"]}
            for m in CORRECTNESS_METRICS:
                if m in metrics and all(leaf["metrics"].get(m) is not None for leaf in leaves):
                    metrics[m] = float(np.average([leaf["metrics"][m] for leaf in leaves], weights=sizes))
                    errs = [leaf["metrics"].get(f"{m}_stderr") for leaf in leaves]
                    if all(e is not None for e in errs):
                        metrics[f"{m}_stderr"] = float(pooled_sample_stderr(errs, sizes))
            tokens = [p["groups"][g]["strategies"][s]["routed_tokens"] for p in parts]
            means = [p["groups"][g]["strategies"][s]["mean_experts_per_token"] for p in parts]
            grp["strategies"][s] = {
                "filter": g0["strategies"][s]["filter"], "metrics": metrics,
                "mean_experts_per_token": sum(m * n for m, n in zip(means, tokens)) / max(sum(tokens), 1),
                "routed_tokens": int(sum(tokens)),
            }
        out["groups"][g] = grp
    _add_paired(out, out["seed"])
    return out


__all__ = [
    "DownstreamError",
    "LOCAL_TASKS",
    "LOCAL_TASKS_DIR",
    "evaluate_downstream",
    "include_paths",
    "mcnemar_exact",
    "merge_downstream",
    "task_manager",
]
