"""DeepSeek-V3: sigmoid router ``mlp.gate`` with a selection bias, group-limited top-k and a
routed scaling factor; the first ``config.first_k_dense_replace`` layers are dense.

What the strategies see. The p-values are computed from the raw router logits z (T, E), in
float32: the quantity the router computes, that ``output_router_logits`` reports and that a
calibration records. The model's score sigmoid(z) is monotone in z, so z ranks experts as the
scores do. Two parts of the model's selection are load-balancing and device-placement devices,
not evidence about a token, and are *not* applied by the strategies: the selection bias
``e_score_correction_bias`` (added to the scores for choosing only) and the group limit (only
experts in the ``topk_group`` best of ``n_group`` groups may be chosen). Where a model has a
non-zero bias or an active group limit, ``TopK(k)`` therefore differs from the model's own
routing, and :func:`bh_routing.models.patched` warns.

Weights keep the family's convention: the chosen experts' sigmoid scores, divided by their sum
(+1e-20) when renormalising, times ``routed_scaling_factor``, in float32. The strategy's
``weight_rule`` decides the renormalisation: ``"model"`` follows ``config.norm_topk_prob``,
``"renormalize"`` always, ``"softmax"`` never (raw sigmoid scores).
"""

from __future__ import annotations

import torch

from .base import MoEAdapter, renormalize_for


class DeepseekV3Adapter(MoEAdapter):
    family = "deepseek_v3"
    model_types = ("deepseek_v3",)
    router_class = "DeepseekV3TopkRouter"
    experts_class = "DeepseekV3Experts"
    score = "sigmoid"
    logits_note = "the raw router logits z (T, E) before the sigmoid, without the selection bias"

    def num_experts(self, config) -> int:
        return int(config.n_routed_experts)

    def is_moe_layer(self, config, decoder_index: int) -> bool:
        return decoder_index >= config.first_k_dense_replace

    def weights(self, logits, result, strategy, config):
        used = result.indices < result.num_experts  # (T, W)
        idx = result.indices.clamp(max=result.num_experts - 1)  # (T, W), in range for gather
        scores = torch.sigmoid(logits.float()).gather(1, idx) * used  # (T, W)
        if renormalize_for(strategy, self.norm_topk_prob(config)):
            scores = scores / (scores.sum(dim=-1, keepdim=True) + 1e-20)
        return scores * config.routed_scaling_factor

    def notes(self, layers, config):
        out = []
        n_group, topk_group = int(config.n_group or 1), int(config.topk_group or 1)
        if n_group > 1 and topk_group < n_group:
            out.append(
                f"deepseek_v3: the group limit (top {topk_group} of {n_group} expert groups) is not applied "
                "by variable-k strategies; TopK(k) differs from the model's own routing"
            )
        if any(bool(layer.router.e_score_correction_bias.detach().ne(0).any()) for layer in layers):
            out.append(
                "deepseek_v3: the selection bias e_score_correction_bias is not applied by variable-k "
                "strategies; TopK(k) differs from the model's own routing"
            )
        return out
