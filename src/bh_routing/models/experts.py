"""Variable k on every experts backend: hand the experts module only the real (token, expert) pairs.

A variable-k router output is padded to a fixed width W with the sentinel index E (weight 0).
transformers' experts backends treat that sentinel differently (5.x): ``eager`` skips it in most
families but gpt-oss's eager one-hots over E classes and raises; ``grouped_mm`` and
``batched_mm`` honour it only when the experts module's private ``_is_expert_parallel`` flag is
set, otherwise grouped_mm returns uninitialised rows (NaN now and then) and batched_mm indexes out
of range; and with the flag batched_mm still computes every padded slot (clamped onto expert E-1,
then weighted by 0), so the work does not fall with k.

So the patched experts module never sees a sentinel. :func:`compacting_forward` wraps the
module's forward: when every slot is real it calls the backend unchanged (bit-identical to the
model); otherwise it gathers the n real pairs, calls the backend once with n rows of width 1
(``hidden (n, H)``, ``index (n, 1)``, ``weight (n, 1)``) - any backend, no flag, no sentinel -
and sums each token's rows back in float32. Each backend then computes exactly the n chosen
pairs. Cost: one host read of n per layer (data-dependent shape), a gather of n hidden rows
(grouped_mm gathers the same rows itself) and a scatter-add; not capturable in a CUDA graph or
``torch.compile`` with ``fullgraph=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .recorder import Recorder


class PairHandoff:
    """The router's word to the experts module of the same layer: "every slot of these indices is real".

    The router forward calls :meth:`give` with the index tensor it returns when it knows that
    (a fixed-width choice: no sentinel); the experts forward asks :meth:`take` about the tensor
    it receives, and gets True only for that very tensor (identity, not equality: anything
    else, e.g. a call of the experts module without its router, counts the pairs itself).
    """

    __slots__ = ("_indices",)

    def __init__(self) -> None:
        self._indices: torch.Tensor | None = None

    def give(self, indices: torch.Tensor) -> None:
        self._indices = indices

    def take(self, indices: torch.Tensor) -> bool:
        """Whether the router vouched for ``indices`` (every slot real); forgets what it was given."""
        full = self._indices is indices
        self._indices = None
        return full


def compacting_forward(
    original: Callable,
    num_experts: int,
    *,
    recorder: Recorder,
    layer: int,
    model_top_k: int,
    handoff: PairHandoff | None = None,
) -> Callable:
    """A forward for an experts module that computes only the real (token, expert) pairs.

    ``original`` is the module's own forward (backend dispatch included); ``num_experts`` is
    the sentinel value. Counts the computed pairs into ``recorder``. ``handoff``: where the
    router says how many pairs are real (see :class:`PairHandoff`).
    """

    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, *args, **kwargs):
        num_tokens, width = top_k_index.shape  # (T, W)
        if handoff is not None and handoff.take(top_k_index):
            n = num_tokens * width  # the router vouched: every slot real, nothing to read
        else:
            real = top_k_index < num_experts  # (T, W) bool
            token, slot = real.nonzero(as_tuple=True)  # (n,), (n,); host read: the size is data-dependent
            n = token.numel()
        recorder.add_pairs(layer, computed=n, dense=num_tokens * model_top_k)
        if n == num_tokens * width:  # no padding: the backend as the model calls it
            return original(hidden_states, top_k_index, top_k_weights, *args, **kwargs)
        if n == 0:
            return torch.zeros_like(hidden_states)
        rows = original(
            hidden_states[token],  # (n, H)
            top_k_index[token, slot].unsqueeze(1),  # (n, 1)
            top_k_weights[token, slot].unsqueeze(1),  # (n, 1)
            *args,
            **kwargs,
        )  # (n, H): each row one expert's weighted output
        out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)  # (T, H)
        out.index_add_(0, token, rows.float())
        return out.to(hidden_states.dtype)

    forward._bh_routing = True  # marks our patch (see patching._is_ours)
    return forward
