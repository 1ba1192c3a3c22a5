"""The vLLM side: a router that routes with a Strategy, and an experts call that skips padding.

Imported only after :func:`bh_routing.vllm.check_vllm` has found the tested vLLM release.

vLLM 0.32's ``MoERunner`` (one per MoE layer) calls ``self.router.select_experts(hidden,
logits)`` -> ``(topk_weights (T, W) float32, topk_ids (T, W) int32)`` and then
``self.routed_experts.forward_modular(x, topk_weights, topk_ids, ...)``, which runs the fused
experts kernel. :class:`StrategyRouter` is a ``BaseRouter`` (so EPLB mapping, dtype conversion
and vLLM's routed-experts capture keep working) whose routing is the strategy's: the same
``adapter.route`` / ``adapter.weights`` calls as :func:`bh_routing.models.patched`, on the
static path (no host read, fixed shapes: vLLM compiles the model and captures CUDA graphs by
default). Unused slots of a variable-k choice get the token's first expert with weight 0 (a real
id: vLLM's CPU kernel indexes its per-expert counters with the id unchecked, so neither the
sentinel E nor -1 may reach it; at small batch a duplicate loads no new expert weights). Inside a
compiled graph those slots are computed (weight 0). Outside one (``enforce_eager=True``),
:func:`compacting_forward_modular` hands the kernel only the n real (token, expert) pairs, as
``n`` rows of width 1, and sums each token's rows back in float32 (one host read of n).
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.fused_moe.config import RoutingMethodType
from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

from ..core import Strategy
from ..core._paths import compiling


class StrategyRouter(BaseRouter):
    """A vLLM router that chooses experts with a bh-routing :class:`~bh_routing.core.Strategy`.

    Parameters
    ----------
    original : BaseRouter
        The layer's own router (kept for restoring, its ``top_k``, experts and EPLB state).
    strategy : Strategy
    layer : object with ``ordinal``
        The MoE layer (its ordinal indexes calibrations and the Recorder).
    adapter, config
        The model family's adapter (:mod:`bh_routing.models.adapters`) and the HF config.
    recorder : Recorder or None
    skip_unused : bool
        Whether the layer's experts call compacts (then the experts call counts computed pairs).
    """

    def __init__(self, original: BaseRouter, *, strategy: Strategy, layer, adapter, config, recorder, skip_unused):
        super().__init__(
            top_k=original.top_k, global_num_experts=original.global_num_experts, eplb_state=original.eplb_state
        )
        self.capture_fn = getattr(original, "capture_fn", None)
        self.original, self.strategy, self.layer = original, strategy, layer
        self.adapter, self.config, self.recorder = adapter, config, recorder
        self.skip_unused = skip_unused
        self.num_experts = adapter.num_experts(config)
        self.last_real: torch.Tensor | None = None  # (T, W) bool of the last call, read by the experts call

    @property
    def routing_method_type(self) -> RoutingMethodType:
        return RoutingMethodType.Custom

    def _compute_routing(self, hidden_states, router_logits, indices_type, *, input_ids=None):
        logits = router_logits  # (T, E)
        # no host read: the logits check is the Recorder's device-side sum (patched() reports it)
        result = self.adapter.route(self.strategy, logits, self.layer, self.config, checked=False)
        weights = self.adapter.weights(logits, result, self.strategy, self.config)  # (T, W), 0 in unused slots
        real = result.indices < self.num_experts  # (T, W)
        first = result.indices[:, :1].clamp(max=self.num_experts - 1)  # (T, 1): a real id even for k = 0
        ids = torch.where(real, result.indices, first)  # (T, W), pads -> the token's first expert, weight 0
        # compaction reads n on the host: only outside a compiled graph (vLLM compiles by default)
        compact = self.skip_unused and not compiling()
        if self.recorder is not None:
            self.recorder.check_finite(self.layer.ordinal, logits)
            self.recorder.record(self.layer.ordinal, result, weights=weights, logits=logits)
            if not compact:  # every slot is computed
                t, w = ids.shape
                self.recorder.add_pairs(self.layer.ordinal, computed=t * w, dense=t * self.top_k)
        self.last_real = real if compact else None
        # the CPU kernel reads contiguous float32 / int32 buffers and ignores strides
        return weights.to(torch.float32).contiguous(), ids.to(indices_type or torch.int32).contiguous()


def compacting_forward_modular(original, router: StrategyRouter):
    """``RoutedExperts.forward_modular`` that computes only the real (token, expert) pairs.

    ``original`` is the instance's bound ``forward_modular``; ``router`` the layer's
    :class:`StrategyRouter`, whose last call says which slots are real.
    """

    def forward_modular(x, topk_weights, topk_ids, shared_experts=None, shared_experts_input=None):
        real = router.last_real  # (T, W) bool
        router.last_real = None
        if real is None or real.shape != topk_ids.shape:  # not our routing: leave the call alone
            return original(x, topk_weights, topk_ids, shared_experts, shared_experts_input)
        num_tokens, width = real.shape
        n = int(real.sum())  # host read: the compacted size is data-dependent
        if router.recorder is not None:
            router.recorder.add_pairs(router.layer.ordinal, computed=n, dense=num_tokens * router.top_k)
        if n == num_tokens * width:  # no padding: the kernel as the model calls it
            return original(x, topk_weights, topk_ids, shared_experts, shared_experts_input)
        token, slot = real.nonzero(as_tuple=True)  # (n,), (n,)
        rows = original(
            x[token],  # (n, H)
            topk_weights[token, slot].unsqueeze(1).contiguous(),  # (n, 1)
            topk_ids[token, slot].unsqueeze(1).contiguous(),  # (n, 1)
            shared_experts,
            shared_experts_input,
        )  # (n, H'): each row one expert's weighted output
        out = torch.zeros(num_tokens, rows.shape[-1], dtype=torch.float32, device=rows.device)  # (T, H')
        out.index_add_(0, token, rows.float())
        return out.to(rows.dtype)

    forward_modular._bh_routing = True
    return forward_modular
