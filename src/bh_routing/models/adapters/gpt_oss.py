"""gpt-oss: router ``mlp.router`` (linear with bias), top-k on the logits, then a softmax over
the k chosen logits; every layer MoE. Its eager experts cannot skip a padding index (one-hot
over E classes), which the compacting experts call of :mod:`bh_routing.models.experts` avoids.

Weights: the softmax over the chosen experts' logits, in the logits' dtype - equal to the
renormalised softmax probabilities (``weight_rule="model"`` or ``"renormalize"``);
``"softmax"`` gives the unnormalised full-softmax probabilities instead.
"""

from __future__ import annotations

import torch

from .base import MoEAdapter, renormalize_for


class GptOssAdapter(MoEAdapter):
    family = "gpt_oss"
    model_types = ("gpt_oss",)
    router_class = "GptOssTopKRouter"
    experts_class = "GptOssExperts"
    router_attr = "router"

    def norm_topk_prob(self, config) -> bool:
        return True

    def weights(self, logits, result, strategy, config):
        if not renormalize_for(strategy, True):
            return result.weights
        used = result.indices < result.num_experts  # (T, W)
        idx = result.indices.clamp(max=result.num_experts - 1)  # (T, W)
        chosen = logits.gather(1, idx).masked_fill(~used, float("-inf"))  # (T, W)
        w = torch.softmax(chosen, dim=1, dtype=logits.dtype)  # (T, W), as the model's router
        return torch.where(used, w, torch.zeros_like(w))  # rows with no expert: 0, not NaN
