"""Mixtral: softmax router ``mlp.gate``, every layer MoE.

Weights: the chosen experts' probabilities, always renormalised to sum 1 (the config has no
``norm_topk_prob``), kept in float32 as the model's router returns them.
"""

from __future__ import annotations

from .base import MoEAdapter


class MixtralAdapter(MoEAdapter):
    family = "mixtral"
    model_types = ("mixtral",)
    router_class = "MixtralTopKRouter"
    experts_class = "MixtralExperts"
    softmax_topk_router = True

    def norm_topk_prob(self, config) -> bool:
        return True
