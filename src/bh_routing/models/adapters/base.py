"""What every MoE family shares: finding the MoE layers, the router's contract, the weight rule.

In transformers 5.x every supported family splits an MoE layer into a router module and an
experts module. The router's forward returns ``(router_logits (T, E), weights (T, k),
indices (T, k))`` and the block calls ``experts(hidden (T, H), indices, weights)``, which reads k
from the tensor shape. An adapter names the two modules, says which decoder layers are MoE
layers, gives the model's k and weight convention, and turns a strategy's
:class:`~bh_routing.core.RoutingResult` into the router's output tuple in the family's format.

Subclasses set the class attributes and override :meth:`MoEAdapter.is_moe_layer`,
:meth:`MoEAdapter.norm_topk_prob` or :meth:`MoEAdapter.weights` where the family differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...core import RoutingResult, Strategy, TopK
from ..errors import UnsupportedModelError, version_note


@dataclass(frozen=True)
class MoELayer:
    """One MoE layer of a model: where it sits and its two modules."""

    ordinal: int  # MoE-layer ordinal 0..L-1: the index used by calibrations and the Recorder
    decoder_index: int  # index of the decoder layer that holds it
    name: str  # module path of the router, e.g. "model.layers.3.mlp.gate"
    block: nn.Module  # the sparse MoE block (parent of router and experts)
    router: nn.Module
    experts: nn.Module


def text_config(model_or_config):
    """The (text) config of a model or config object."""
    config = getattr(model_or_config, "config", model_or_config)
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The first ``ModuleList`` named ``layers`` (the decoder stack) and its module path."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers":
            return name, module
    raise UnsupportedModelError(f"found no decoder layer stack ('layers') in {type(model).__name__}; {version_note()}")


class MoEAdapter:
    """Base adapter; one subclass per family (see the module notes)."""

    family: ClassVar[str] = ""  # registry name, e.g. "olmoe"
    model_types: ClassVar[tuple[str, ...]] = ()  # config.model_type values this adapter handles
    router_class: ClassVar[str] = ""  # class name of the router module
    experts_class: ClassVar[str] = ""  # class name of the experts module
    block_attr: ClassVar[str] = "mlp"  # attribute of the decoder layer holding the MoE block
    router_attr: ClassVar[str] = "gate"  # attribute of the block holding the router
    experts_attr: ClassVar[str] = "experts"  # attribute of the block holding the experts
    score: ClassVar[str] = "softmax"  # router probabilities from logits: "softmax" or "sigmoid"
    # the router returns topk(softmax(logits, float32), k) (renormalised iff norm_topk_prob), the
    # weights in its dtype: the computation of TopK(k); see routes_as_model
    softmax_topk_router: ClassVar[bool] = False
    logits_note: ClassVar[str] = "the router logits (T, E) the model's router computes"

    # --- the model's routing conventions -------------------------------------------------------
    def num_experts(self, config) -> int:
        return int(config.num_local_experts)

    def top_k(self, config) -> int:
        return int(config.num_experts_per_tok)

    def norm_topk_prob(self, config) -> bool:
        """Whether the model renormalises the chosen experts' probabilities to sum 1."""
        return bool(getattr(config, "norm_topk_prob", False))

    def is_moe_layer(self, config, decoder_index: int) -> bool:
        """Whether decoder layer ``decoder_index`` has an MoE block (else a dense MLP)."""
        return True

    # --- finding the layers ----------------------------------------------------------------------
    def layout_error(self, what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.family} layout not recognised: {what}; {version_note()}")

    def find_layers(self, model: nn.Module) -> list[MoELayer]:
        """Every MoE layer of ``model``, in decoder order; raises on any layout surprise."""
        config = text_config(model)
        stack_name, layers = decoder_layers(model)
        num_experts = self.num_experts(config)
        found: list[MoELayer] = []
        for i, layer in enumerate(layers):
            block = getattr(layer, self.block_attr, None)
            path = f"{stack_name}.{i}.{self.block_attr}"
            router = getattr(block, self.router_attr, None)
            if not self.is_moe_layer(config, i):
                if router is not None:
                    raise self.layout_error(f"{path} should be a dense layer but has a '{self.router_attr}'")
                continue
            experts = getattr(block, self.experts_attr, None)
            for attr, module, expected in (
                (self.router_attr, router, self.router_class),
                (self.experts_attr, experts, self.experts_class),
            ):
                if type(module).__name__ != expected:
                    found_name = type(module).__name__ if module is not None else "nothing"
                    raise self.layout_error(f"expected {expected} at {path}.{attr}, found {found_name}")
            if int(getattr(experts, "num_experts", -1)) != num_experts:
                raise self.layout_error(f"{path}.{self.experts_attr} does not hold {num_experts} experts")
            found.append(
                MoELayer(
                    ordinal=len(found),
                    decoder_index=i,
                    name=f"{path}.{self.router_attr}",
                    block=block,
                    router=router,
                    experts=experts,
                )
            )
        if not found:
            raise self.layout_error(f"no MoE layer found in {type(model).__name__}")
        return found

    def check_router_output(self, out, layer: MoELayer) -> None:
        """The router must return (logits (T, E), weights (T, k), indices (T, k))."""
        ok = (
            isinstance(out, tuple)
            and len(out) == 3
            and all(isinstance(t, torch.Tensor) for t in out)
            and out[0].dim() == 2
            and out[1].shape == out[2].shape
            and out[1].dim() == 2
            and out[1].shape[0] == out[0].shape[0]
        )
        if not ok:
            shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in out] if isinstance(
                out, tuple
            ) else type(out).__name__
            raise self.layout_error(
                f"{layer.name} returned {shapes}, expected (logits (T, E), weights (T, k), indices (T, k))"
            )

    def router_logits(self, layer: MoELayer, hidden_states: torch.Tensor) -> torch.Tensor:
        """The router logits (T, E) of ``layer`` for hidden states (..., H), from the router's own
        class forward (so neither a patch nor a hook runs)."""
        out = type(layer.router).forward(layer.router, hidden_states.reshape(-1, hidden_states.shape[-1]))
        self.check_router_output(out, layer)
        return out[0]

    # --- routing with a strategy -----------------------------------------------------------------
    def routes_as_model(self, strategy: Strategy, config) -> bool:
        """Whether ``strategy`` chooses exactly what the model's router returns, bit for bit.

        True for ``TopK`` with the model's k and weight convention on a softmax top-k router
        (:attr:`softmax_topk_router`): the router computes ``softmax(logits, float32)``,
        ``topk(k)`` and renormalises iff the model does, which is :class:`~bh_routing.core.TopK`'s
        computation (tests/models/test_patching.py compares the two per family and dtype).
        The patch then uses the router's own output and does not route a second time.
        """
        norm = self.norm_topk_prob(config)
        return (
            self.softmax_topk_router
            and type(strategy) is TopK
            and strategy.k == self.top_k(config)
            and renormalize_for(strategy, norm) == norm
        )

    def route(self, strategy: Strategy, logits: torch.Tensor, layer: MoELayer, config, *, checked: bool = True) -> RoutingResult:
        """The strategy's choice for router logits (T, E); the strategy sees them in float32.

        ``checked=False``: the logits are not checked for being finite here (that check is a host
        read; the patch does it on the device, see :meth:`bh_routing.models.Recorder.check_finite`).
        """
        return (strategy.route if checked else strategy._route)(
            logits.float(),  # (T, E)
            layer=layer.ordinal,
            model_top_k=self.top_k(config),
            norm_topk_prob=self.norm_topk_prob(config),
        )

    def weights(self, logits: torch.Tensor, result: RoutingResult, strategy: Strategy, config) -> torch.Tensor:
        """Mixing weights (T, W) in the family's convention; 0 in unused slots.

        Softmax families: the strategy's own weights (its ``weight_rule``, with ``"model"``
        following :meth:`norm_topk_prob`).
        """
        return result.weights

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The router's per-expert scores (T, E) in float32: softmax, or sigmoid for DeepSeek-V3."""
        if self.score == "sigmoid":
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), dim=-1)

    def router_output(self, out: tuple, result: RoutingResult, weights: torch.Tensor) -> tuple:
        """The router's tuple with the strategy's choice: same logits, dtypes as the model's own."""
        logits, model_weights, model_indices = out
        return logits, weights.to(model_weights.dtype), result.indices.to(model_indices.dtype)

    def notes(self, layers: list[MoELayer], config) -> list[str]:
        """Warnings about this model's routing that a variable-k strategy does not reproduce."""
        return []


def renormalize_for(strategy: Strategy, model_norm: bool) -> bool:
    """Whether the chosen weights are renormalised, by the strategy's ``weight_rule``."""
    rule = getattr(strategy, "weight_rule", "model")
    return {"model": model_norm, "softmax": False, "renormalize": True}.get(rule, model_norm)
