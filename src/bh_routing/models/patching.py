"""``patched(model, strategy, mode)``: route a transformers MoE model with a strategy, in place.

Each MoE layer's router keeps its module object (so transformers' own output recording - the
``router_logits`` of ``output_router_logits`` - keeps working); only the instance's ``forward``
is swapped for one that calls the original router, hands its logits to the strategy, records the
choice and, in ``"patch"`` mode, returns the strategy's choice in the family's tuple format. In
``"patch"`` mode the experts module's forward is wrapped too, so that every experts backend
computes only the chosen (token, expert) pairs (see :mod:`bh_routing.models.experts`). In
``"analyze"`` mode the router's own output is returned untouched: the model's outputs are
bit-identical and the strategy's choice is only recorded. Everything is resolved and checked
before anything is patched, and every forward is restored on exit, also when the body raises.

Cost per layer and call (counted by ``benchmarks/bench_overhead.py``, pinned by
tests/benchmarks/test_bench_overhead.py): no host read and no data-dependent shape, for every
strategy (the static path, see docs/scaling.md), so a patched model compiles whole with
``torch.compile(fullgraph=True)``. ``TopK`` at the model's k and weight convention on a softmax
top-k router *is* the router's output, which is used as it is: two recording kernels. Any other
strategy routes a second time (its p-values, count, weights: tens of small ops, which a compiled
model fuses). The logits are checked for being finite on the device (a per-layer sum) and the
check is read once, when the ``with`` block ends (it raises there); they are not checked when
the router's own output is used (the model routes them as it would unpatched).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from ..core import Strategy
from .adapters import MoEAdapter, MoELayer, get_adapter
from .adapters.base import text_config
from .experts import PairHandoff, experts_forward
from .fingerprint import model_fingerprint
from .recorder import Recorder

MODES = ("patch", "analyze")
_MISSING = object()


def _is_ours(fn) -> bool:
    return bool(getattr(fn, "_bh_routing", False))


def resolve_strategies(strategy, num_layers: int) -> list[Strategy]:
    """One strategy per MoE layer from a Strategy or a mapping ``{ordinal | "default": Strategy}``.

    A mapping must cover every MoE layer 0..L-1, or hold a ``"default"`` for the layers it omits.
    """
    if isinstance(strategy, Strategy):
        return [strategy] * num_layers
    if not isinstance(strategy, Mapping):
        raise TypeError(
            f"strategy must be a Strategy or a mapping {{moe_layer: Strategy}}, got {type(strategy).__name__}"
        )
    def is_ordinal(k) -> bool:
        return isinstance(k, int) and not isinstance(k, bool) and 0 <= k < num_layers

    bad = [k for k in strategy if k != "default" and not is_ordinal(k)]
    if bad:
        raise ValueError(f"strategy keys must be MoE-layer ordinals in [0, {num_layers}) or 'default', got {bad}")
    for key, value in strategy.items():
        if not isinstance(value, Strategy):
            raise TypeError(f"strategy for layer {key!r} must be a Strategy, got {type(value).__name__}")
    default = strategy.get("default")
    missing = [i for i in range(num_layers) if i not in strategy]
    if missing and default is None:
        raise ValueError(
            f"strategy mapping misses MoE layers {missing} (the model has {num_layers} MoE layers, "
            f"0..{num_layers - 1}); give each layer a strategy or add a 'default' key"
        )
    return [strategy.get(i, default) for i in range(num_layers)]


def _compute_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device for an offloaded (meta) module."""
    hook_device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if hook_device is not None:
        return torch.device(hook_device if not isinstance(hook_device, int) else f"cuda:{hook_device}")
    device = module.weight.device
    return torch.device("cpu") if device.type == "meta" else device


def _prepare_strategies(model, adapter: MoEAdapter, layers: list[MoELayer], strategies: list[Strategy], config):
    """Check calibrations against the model, move their tables to the router's device, dry-run each.

    Returns the strategies to use (copies where a calibration had to move device).
    """
    return prepare_strategies(
        adapter,
        layers,
        strategies,
        config,
        fingerprint=lambda: model_fingerprint(model),
        model_name=getattr(config, "_name_or_path", "") or type(model).__name__,
        device_of=lambda layer: _compute_device(layer.router),
    )


def prepare_strategies(
    adapter: MoEAdapter,
    layers: list,
    strategies: list[Strategy],
    config,
    *,
    fingerprint,
    model_name: str,
    device_of,
    num_layers: int | None = None,
) -> list[Strategy]:
    """Check calibrations, put their tables on each layer's device, dry-run each strategy.

    Shared by :func:`patched` and :func:`bh_routing.vllm.patched`. ``layers`` are objects with an
    ``ordinal``; ``strategies[i]`` belongs to ``layers[i]``; ``fingerprint()`` gives the model's
    :func:`~bh_routing.models.model_fingerprint` (called only when a calibration is used);
    ``device_of(layer)`` the device the layer routes on; ``num_layers`` the model's MoE layers
    (default ``len(layers)``).
    A bad setting (k > E, ...) raises here, before anything is patched.
    """
    num_experts = adapter.num_experts(config)
    calibrated = [s for s in strategies if getattr(s, "calibration", None) is not None]
    if calibrated:
        have = fingerprint()
        for s in {id(s): s for s in calibrated}.values():
            s.calibration.check_matches(
                model_fingerprint=have,
                num_layers=len(layers) if num_layers is None else num_layers,
                num_experts=num_experts,
                model_name=model_name,
            )
    moved: dict[tuple[int, torch.device], Strategy] = {}
    out = []
    for layer, s in zip(layers, strategies):
        device = device_of(layer)  # layers may sit on different devices (device_map)
        cal = getattr(s, "calibration", None)
        if cal is not None and cal.null_sorted.device != device:
            key = (id(s), device)
            if key not in moved:
                moved[key] = copy.copy(s)
                moved[key].calibration = cal.to(device)
            s = moved[key]
        adapter.route(s, torch.zeros(1, num_experts, device=device), layer, config)
        out.append(s)
    return out


def _router_forward(
    original,
    adapter: MoEAdapter,
    layer: MoELayer,
    strategy: Strategy,
    recorder: Recorder,
    config,
    mode: str,
    handoff: PairHandoff | None = None,
):
    """The router's new forward: the original router, then the strategy (see the module notes).

    Where the strategy routes exactly as the model (``TopK`` with the model's k and weight rule
    on a softmax top-k router, :meth:`MoEAdapter.routes_as_model`) the router's own output *is*
    the strategy's choice, bit for bit (tests/models/test_patching.py checks it per family and
    dtype): it is used as it is, and no second softmax and top-k run. ``handoff`` tells the
    compacting experts forward of the same layer that a fixed-width choice has no sentinel,
    so that it needs no host read to find out.
    """
    top_k = adapter.top_k(config)
    as_model = adapter.routes_as_model(strategy, config) and not recorder.record_tokens
    fixed = getattr(strategy, "fixed_width", False)  # every slot real (TopK): no sentinel to remove

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        adapter.check_router_output(out, layer)
        logits = out[0]  # (T, E)
        if as_model:
            recorder.record_model_choice(layer.ordinal, out[2], analyze=mode == "analyze")
            if handoff is not None:
                handoff.give(out[2], counted=True)
            return out
        recorder.check_finite(layer.ordinal, logits)  # on the device; read once, at the block's end
        if mode == "analyze":
            with torch.no_grad():
                result = adapter.route(strategy, logits, layer, config, checked=False)
                # the family's weights are recorded only per token; the aggregates do not read them
                weights = adapter.weights(logits, result, strategy, config) if recorder.record_tokens else result.weights
            recorder.record(
                layer.ordinal, result, weights=weights, logits=logits, model_indices=out[2], pairs_per_token=top_k
            )
            return out
        result = adapter.route(strategy, logits, layer, config, checked=False)
        weights = adapter.weights(logits, result, strategy, config)  # (T, W)
        recorder.record(layer.ordinal, result, weights=weights, logits=logits)
        routed = adapter.router_output(out, result, weights)
        if handoff is not None and fixed:
            handoff.give(routed[2])
        return routed

    forward._bh_routing = True
    return forward


def _describe(strategies: list[Strategy]) -> dict:
    descs = [s.describe() for s in strategies]
    if all(d == descs[0] for d in descs):
        return {"strategy": descs[0]}
    return {"strategies": descs}


@contextmanager
def patched(
    model: nn.Module,
    strategy: Strategy | Mapping,
    mode: str = "patch",
    *,
    record_tokens: bool = False,
) -> Iterator[Recorder]:
    """Route every MoE layer of ``model`` with ``strategy`` inside the ``with`` block.

    Parameters
    ----------
    model : transformers model of a supported MoE family (see :func:`get_adapter`)
    strategy : Strategy or mapping
        One strategy for all MoE layers, or ``{moe_layer_ordinal: Strategy}`` covering every
        layer 0..L-1, or with a ``"default"`` key for the layers it omits.
    mode : {"patch", "analyze"}, default "patch"
        ``"patch"``: the model routes with the strategy and computes only the chosen experts.
        ``"analyze"``: the model routes as usual (bit-identical outputs); the strategy's choice
        is computed and recorded beside it.
    record_tokens : bool, default False
        Keep every token's choice in the Recorder (memory grows with the tokens).

    Yields
    ------
    Recorder
        Statistics of the strategy's choices (readable after the block too).

    Raises
    ------
    ValueError, TypeError
        Bad mode or strategy mapping; a strategy setting that does not fit the model.
    UnsupportedModelError
        Not a supported MoE family, or a layout the adapter does not recognise.
    CalibrationMismatchError
        A calibrated BH strategy made for another model.
    RuntimeError
        The model is already patched.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    adapter = get_adapter(model)
    config = text_config(model)
    layers = adapter.find_layers(model)
    for layer in layers:
        for module in (layer.router, layer.experts):
            if _is_ours(module.__dict__.get("forward")):
                raise RuntimeError(
                    f"{type(model).__name__} is already patched by bh_routing.models.patched(); "
                    "leave that context before patching it again"
                )
    strategies = _prepare_strategies(model, adapter, layers, resolve_strategies(strategy, len(layers)), config)
    for note in adapter.notes(layers, config):
        warnings.warn(note, stacklevel=3)
    top_k, num_experts = adapter.top_k(config), adapter.num_experts(config)
    recorder = Recorder(
        num_layers=len(layers),
        num_experts=num_experts,
        model_top_k=top_k,
        record_tokens=record_tokens,
        score=adapter.score,
        meta={
            "family": adapter.family,
            "mode": mode,
            **_describe(strategies),
            "layers": [layer.name for layer in layers],
        },
    )
    recorder.allocate(_compute_device(layers[0].router))  # before any call: a compiled model allocates nothing

    saved: list[tuple[nn.Module, object]] = []
    hooks = []

    def install(module: nn.Module, forward) -> None:
        saved.append((module, module.__dict__.get("forward", _MISSING)))
        module.forward = forward

    def take_mask(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        recorder.set_token_mask(mask)

    def drop_mask(module, args, output):
        recorder.set_token_mask(None)

    try:
        for layer, s in zip(layers, strategies):
            handoff = PairHandoff() if mode == "patch" else None
            install(
                layer.router,
                _router_forward(layer.router.forward, adapter, layer, s, recorder, config, mode, handoff),
            )
            if mode == "patch":
                install(
                    layer.experts,
                    experts_forward(
                        layer.experts.forward,
                        layer.experts,
                        num_experts,
                        recorder=recorder,
                        layer=layer.ordinal,
                        model_top_k=top_k,
                        handoff=handoff,
                    ),
                )
        hooks.append(model.register_forward_pre_hook(take_mask, with_kwargs=True))
        hooks.append(model.register_forward_hook(drop_mask, always_call=True))
        yield recorder
        bad = recorder.nonfinite_layers()  # the logits check, read once (see Recorder.check_finite)
        if bad:
            raise ValueError(f"logits must be finite, got NaN or inf in the router logits of MoE layer(s) {bad}")
    finally:
        for hook in hooks:
            hook.remove()
        for module, old in reversed(saved):
            if old is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = old
        recorder.set_token_mask(None)
