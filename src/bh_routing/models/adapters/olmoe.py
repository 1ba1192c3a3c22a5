"""OLMoE (allenai/OLMoE-1B-7B-0924): softmax router ``mlp.gate``, every layer MoE.

Weights: the chosen experts' softmax probabilities, renormalised only if
``config.norm_topk_prob`` (False for OLMoE-1B-7B), in the logits' dtype.
"""

from __future__ import annotations

from .base import MoEAdapter


class OlmoeAdapter(MoEAdapter):
    family = "olmoe"
    model_types = ("olmoe",)
    router_class = "OlmoeTopKRouter"
    experts_class = "OlmoeExperts"
    softmax_topk_router = True
