"""``inspect_model``: what a loaded MoE model is, in one dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from .adapters import get_adapter
from .adapters.base import text_config


@dataclass(frozen=True)
class ModelInfo:
    """A loaded MoE model, as bh-routing sees it."""

    family: str  # adapter name, e.g. "olmoe"
    model_class: str  # e.g. "OlmoeForCausalLM"
    name_or_path: str  # where it was loaded from ("" for a model built in memory)
    num_layers: int  # decoder layers
    num_moe_layers: int  # MoE layers among them
    moe_layer_indices: list[int]  # decoder index of each MoE layer
    num_experts: int  # routed experts per MoE layer
    top_k: int  # the model's own experts per token
    norm_topk_prob: bool  # whether the model renormalises the chosen weights
    router_class: str
    experts_class: str
    experts_implementation: str  # the experts backend: "eager", "grouped_mm", "batched_mm", ...
    dtype: str
    device: str
    total_params: int
    expert_params: int  # parameters of the routed experts
    active_params: int  # per token: non-expert parameters + top_k / E of the expert parameters

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        def billions(n: int) -> str:
            return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"

        rows = [
            ("family", f"{self.family} ({self.model_class})"),
            ("loaded from", self.name_or_path or "(in memory)"),
            ("MoE layers", f"{self.num_moe_layers} of {self.num_layers} decoder layers"),
            ("experts", f"{self.num_experts} per layer, top-{self.top_k}, norm_topk_prob={self.norm_topk_prob}"),
            ("router", self.router_class),
            ("experts module", f"{self.experts_class}, backend {self.experts_implementation}"),
            ("dtype / device", f"{self.dtype} / {self.device}"),
            ("parameters", f"{billions(self.total_params)} total, {billions(self.active_params)} active per token"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def inspect_model(model: nn.Module) -> ModelInfo:
    """Family, MoE layout, routing conventions, backend and parameter counts of ``model``."""
    adapter = get_adapter(model)
    config = text_config(model)
    layers = adapter.find_layers(model)
    params = list(model.parameters())
    total = sum(p.numel() for p in {id(p): p for p in params}.values())
    expert = sum(p.numel() for layer in layers for p in layer.experts.parameters())
    num_experts, top_k = adapter.num_experts(config), adapter.top_k(config)
    active = total - expert + round(expert * top_k / num_experts)
    first = params[0] if params else None
    return ModelInfo(
        family=adapter.family,
        model_class=type(model).__name__,
        name_or_path=str(getattr(config, "_name_or_path", "") or ""),
        num_layers=int(config.num_hidden_layers),
        num_moe_layers=len(layers),
        moe_layer_indices=[layer.decoder_index for layer in layers],
        num_experts=num_experts,
        top_k=top_k,
        norm_topk_prob=adapter.norm_topk_prob(config),
        router_class=adapter.router_class,
        experts_class=adapter.experts_class,
        experts_implementation=str(
            getattr(getattr(layers[0].experts, "config", config), "_experts_implementation", None) or "eager"
        ),
        dtype=str(first.dtype).replace("torch.", "") if first is not None else "?",
        device=str(first.device) if first is not None else "?",
        total_params=total,
        expert_params=expert,
        active_params=active,
    )
