"""The ``downstream`` step: lm-evaluation-harness tasks under top-k and BH (``bh-routing lm-eval``).

Runs only when ``downstream_tasks`` names tasks; reads no evaluation text.
"""

from __future__ import annotations

import logging

from ...core import TopK
from ...core.families import strategy_from_spec
from ..config import RunConfig
from ..registry import Context, Step, register_step


def _check(cfg: RunConfig) -> None:
    """Unknown task or folder: refused before the model loads."""
    if cfg.downstream_tasks:
        from ...analysis.downstream import DownstreamError, task_manager

        task_manager(cfg.downstream_tasks, cfg.downstream_include_path)
        if cfg.downstream_backend == "vllm":
            from ...vllm import VLLMIntegrationError, check_vllm

            try:
                check_vllm()
            except VLLMIntegrationError as exc:
                raise DownstreamError(f"--backend vllm: {exc}") from None


def _downstream(ctx: Context):
    cfg = ctx.cfg
    if not cfg.downstream_tasks:
        return None
    from ...analysis.downstream import evaluate_downstream

    method = cfg.downstream_pvalues
    strategies = {"topk": TopK(ctx.routing.top_k)}
    for a in cfg.downstream_alphas:
        strategies[f"bh-{method}-{a:g}"] = ctx.rs.bh(method, ctx.calibration, alpha=a)
    for spec in cfg.downstream_strategies:
        strategies[spec] = strategy_from_spec(spec)
    limit = cfg.downstream_limit
    limit = None if limit is None else (int(limit) if limit >= 1 else float(limit))
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on model objects and local datasets, per call
    return evaluate_downstream(
        ctx.model, ctx.tokenizer, strategies, list(cfg.downstream_tasks), include_path=cfg.downstream_include_path,
        limit=limit, batch_size=cfg.downstream_batch_size, seed=cfg.seed,
        shard=None if cfg.downstream_shard is None else tuple(cfg.downstream_shard), top_k=ctx.routing.top_k,
        backend=cfg.downstream_backend,
    )


register_step(Step(
    "downstream", _downstream, needs=("calibration",), groups=("run", "lm-eval"),
    reads_text=lambda cfg: False, check=_check,
))
