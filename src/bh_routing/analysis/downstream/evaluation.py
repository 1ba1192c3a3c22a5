"""``evaluate_downstream``: every (strategy, task) through lm-eval, assembled into one document."""

from __future__ import annotations

from ...core import Strategy
from .document import assemble
from .harness import run_one
from .pairing import baseline
from .tasks import (
    DownstreamError,
    check_settings,
    check_shard,
    include_paths,
    leaves,
    plan,
    require_lm_eval,
    task_manager,
)

BACKENDS = ("hf", "vllm")


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
    top_k: int | None = None,
    backend: str = "hf",
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
        :data:`~bh_routing.analysis.downstream.LOCAL_TASKS` work offline.
    include_path : str, Path or list, optional
        Extra folders of task YAMLs (the shipped ``LOCAL_TASKS_DIR`` is always included).
    limit : int or float, optional
        At most this many documents per task (a fraction of each task when below 1), as lm-eval's ``limit``.
    batch_size : int, default 1
        lm-eval's batch size (see :mod:`~bh_routing.analysis.downstream.harness` on padding).
    seed : int, default 42
        lm-eval's random, numpy, torch and few-shot seeds, and the bootstrap's.
    shard : (rank, world_size), optional
        Evaluate only documents ``rank, rank + world_size, …`` of every task; merge the parts with
        :func:`~bh_routing.analysis.downstream.merge_downstream`.
    bootstrap_iters : int, default 100000
        lm-eval's bootstrap iterations for the standard errors it bootstraps (not needed for acc).
    top_k : int, optional
        The model's own top-k (computed from the model when not given).
    backend : {"hf", "vllm"}, default "hf"
        ``"hf"``: lm-eval's HFLM on ``model``, routed by :func:`bh_routing.models.patched`.
        ``"vllm"``: lm-eval's ``vllm`` model on the same checkpoint (``model.config._name_or_path``)
        in ``model``'s dtype, engine in this process, routed by :func:`bh_routing.vllm.patched`
        (needs vLLM, ``make setup-vllm``). The paired tests are the same.

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
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    check_settings(tasks, limit=limit, batch_size=batch_size, shard=shard, strategies=strategies)
    shard = check_shard(shard)
    tm = task_manager(tasks, include_path)
    plans = plan(tm, tasks, limit, shard)
    if top_k is None:
        from ...models import inspect_model

        top_k = inspect_model(model).top_k
    if backend not in BACKENDS:
        raise DownstreamError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "vllm":
        from ...vllm import lm_eval_vllm
        from ...vllm import patched as vllm_patched

        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        lm = lm_eval_vllm(model.config._name_or_path, dtype=dtype, batch_size=batch_size, seed=seed)

        def routing(strategy):
            return vllm_patched(lm.model, strategy)
    else:
        from ...models import patched

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

        def routing(strategy):
            return patched(model, strategy, mode="patch")
    runs = {
        s: {spec: run_one(lm, routing, strategy, spec, plans[spec], tm, limit=limit, seed=seed, bootstrap_iters=bootstrap_iters)
            for spec in tasks}
        for s, strategy in strategies.items()
    }
    found, groups_out = {}, {}
    for spec in tasks:
        groups = plans[spec]["groups"]
        member = {leaf: g for g in groups for leaf in leaves(groups, g)}
        for name, leaf in plans[spec]["leaves"].items():
            found[name] = {
                "output_type": leaf["output_type"], "n": leaf["n"], "n_docs": leaf["n_docs"], "group": member.get(name),
                "requested_as": spec, "strategies": {s: runs[s][spec]["leaves"][name] for s in strategies},
            }
        for g in groups:
            groups_out[g] = {
                "tasks": leaves(groups, g), "requested_as": spec, "top_level": g == spec,
                "strategies": {s: runs[s][spec]["groups"][g] for s in strategies},
            }
    settings = {
        "lm_eval_version": getattr(lm_eval, "__version__", None), "tasks_requested": list(tasks),
        "include_path": [str(p) for p in include_paths(include_path)[1:]], "limit": limit, "batch_size": batch_size,
        "seed": seed, "bootstrap_iters": bootstrap_iters, "model_top_k": top_k, "backend": backend,
        "strategies": {s: strategy.describe() for s, strategy in strategies.items()},
        "baseline": baseline(strategies, top_k),
    }
    shard_doc = None if shard is None else {"rank": shard[0], "world_size": shard[1]}
    return assemble(settings, shard=shard_doc, tasks=found, groups=groups_out)
