"""Qwen2-MoE: softmax router ``mlp.gate`` plus a gated shared expert; some layers may be dense.

A decoder layer is MoE unless it is in ``config.mlp_only_layers`` or
``(index + 1) % config.decoder_sparse_step != 0``. The shared expert runs on every token and is
not part of the routing (nor of the Recorder's counts). Weights: softmax probabilities,
renormalised only if ``config.norm_topk_prob``.
"""

from __future__ import annotations

from .base import MoEAdapter


def sparse_step_is_moe(config, decoder_index: int) -> bool:
    """The Qwen-MoE rule for which decoder layers hold an MoE block."""
    return (
        decoder_index not in (config.mlp_only_layers or [])
        and config.num_experts > 0
        and (decoder_index + 1) % config.decoder_sparse_step == 0
    )


class Qwen2MoeAdapter(MoEAdapter):
    family = "qwen2_moe"
    model_types = ("qwen2_moe",)
    router_class = "Qwen2MoeTopKRouter"
    experts_class = "Qwen2MoeExperts"
    softmax_topk_router = True

    def num_experts(self, config) -> int:
        return int(config.num_experts)

    def is_moe_layer(self, config, decoder_index: int) -> bool:
        return sparse_step_is_moe(config, decoder_index)
