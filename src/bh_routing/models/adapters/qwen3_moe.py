"""Qwen3-MoE: softmax router ``mlp.gate``; dense layers by the same rule as Qwen2-MoE.

Weights: softmax probabilities, renormalised if ``config.norm_topk_prob`` (True for the
released models).
"""

from __future__ import annotations

from .base import MoEAdapter
from .qwen2_moe import sparse_step_is_moe


class Qwen3MoeAdapter(MoEAdapter):
    family = "qwen3_moe"
    model_types = ("qwen3_moe",)
    router_class = "Qwen3MoeTopKRouter"
    experts_class = "Qwen3MoeExperts"
    softmax_topk_router = True

    def is_moe_layer(self, config, decoder_index: int) -> bool:
        return sparse_step_is_moe(config, decoder_index)
