"""Variable k on every experts backend: compute only the real (token, expert) pairs.

A variable-k router output is padded to a fixed width W with the sentinel index E (weight 0).
transformers' experts backends treat that sentinel differently (5.x): ``eager`` skips it in most
families but gpt-oss's eager one-hots over E classes and raises; ``grouped_mm`` and
``batched_mm`` honour it only when the experts module's private ``_is_expert_parallel`` flag is
set, otherwise grouped_mm returns uninitialised rows (NaN now and then) and batched_mm indexes out
of range. So no backend is handed a bare sentinel. :func:`experts_forward` wraps the module's
forward and takes one of three paths:

* every slot real (the router vouched, :class:`PairHandoff`): the backend as the model calls it
  (bit-identical to the model).
* ``grouped_mm`` (the static path, :func:`grouped_pairs`): our own grouped forward over the
  module's weights. The T x W slots are sorted by expert id, so the sentinels go to the tail;
  per-expert offsets come from a ``searchsorted`` on the device and leave the sentinels out; the
  grouped GEMMs compute rows below the last offset only, so only the real pairs are computed;
  the tail rows are masked once and each token's W rows summed in float32. Fixed shapes, no
  host read: capturable by ``torch.compile(fullgraph=True)`` and CUDA graphs. The computed
  pairs (the last offset) are added to the Recorder on the device.
* ``eager`` and ``batched_mm``, which cannot skip a row, and any module under an accelerate hook
  (``device_map``, offloading: the hook must run around the module's own forward): outside a compiled graph the n real
  pairs are gathered (one host read of n, a data-dependent shape) and the backend is called once
  with n rows of width 1; inside a compiled graph (the capture-safe fallback) the sentinels are
  replaced by the token's first expert at weight 0 and the backend computes all T x W slots.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core._paths import compiling
from ..core.bh import _arange
from .recorder import Recorder


class PairHandoff:
    """The router's word to the experts module of the same layer: "every slot of these indices is real".

    The router forward calls :meth:`give` with the index tensor it returns when it knows that
    (a fixed-width choice: no sentinel); the experts forward asks :meth:`take` about the tensor
    it receives, and gets True only for that very tensor (identity, not equality: anything
    else, e.g. a call of the experts module without its router, counts the pairs itself).
    ``counted``: the router has recorded the computed pairs too (:attr:`counted` after ``take``).
    """

    __slots__ = ("_indices", "_counted", "counted")

    def __init__(self) -> None:
        self._indices: torch.Tensor | None = None
        self._counted = self.counted = False

    def give(self, indices: torch.Tensor, *, counted: bool = False) -> None:
        self._indices, self._counted = indices, counted

    def take(self, indices: torch.Tensor) -> bool:
        """Whether the router vouched for ``indices`` (every slot real); forgets what it was given."""
        full = self._indices is indices
        self.counted = full and self._counted
        self._indices, self._counted = None, False
        return full


def _native_grouped_mm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether torch's grouped GEMM runs here (the conditions transformers 5.x checks too)."""
    grouped = getattr(torch.nn.functional, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    if grouped is None or (compiling() and weight.dtype != torch.bfloat16):
        return False  # inductor lowers grouped_mm for bfloat16 only
    if weight.device.type == "cuda":
        return torch.cuda.get_device_capability(weight.device) >= (8, 0)
    if weight.device.type == "cpu" and torch.__version__ < (2, 11):  # no CPU kernel before 2.9; aligned only before 2.11
        aligned = not compiling() and weight.data_ptr() % 16 == 0 and x.data_ptr() % 16 == 0
        return torch.__version__ >= (2, 9) and aligned
    return True


def _grouped_mm(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(S, in) rows grouped by ``offsets`` (E,) int32 times ``weight`` (E, in, out) -> (S, out).

    Rows at or past ``offsets[-1]`` are not computed (their output is undefined)."""
    x = x.to(weight.dtype)
    if _native_grouped_mm(x, weight):
        grouped = getattr(torch.nn.functional, "grouped_mm", None) or torch._grouped_mm
        return grouped(x, weight, offs=offsets)
    import transformers.integrations.moe  # noqa: F401  registers the loop over experts as an opaque op

    return torch.ops.transformers.grouped_mm_fallback(x, weight, offsets)


def _grouped_linear(x, weight, offsets, bias, ids, transposed: bool) -> torch.Tensor:
    out = _grouped_mm(x, weight if transposed else weight.transpose(-2, -1), offsets)  # (S, out)
    return out if bias is None else out + bias[ids]


def grouped_pairs(module, hidden: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, num_experts: int):
    """The experts' output (T, H) for ``index``/``weights`` (T, W) with sentinel E, and the number
    of real pairs (a 0-d device tensor): only the real pairs computed, fixed shapes, no host read.

    ``module`` is a transformers experts module (``gate_up_proj`` or ``up_proj``, ``down_proj``,
    optional biases, ``is_transposed``, ``_apply_gate``/``act_fn``, as transformers 5.x's
    ``use_experts_implementation`` defines them).
    """
    t, w = index.shape
    ids = index.reshape(-1)  # (S,) S = T W, token-major
    sorted_ids, perm = torch.sort(ids, stable=True)  # (S,): experts in order, sentinels E at the tail
    offsets = torch.searchsorted(sorted_ids, _arange(1, num_experts + 1, ids.device), out_int32=True)  # (E,) row ends
    safe = sorted_ids.clamp(max=num_experts - 1)  # (S,) in range for the bias gathers
    rows = hidden[perm // w]  # (S, H): each pair's token
    has_bias, transposed = getattr(module, "has_bias", False), getattr(module, "is_transposed", False)
    if getattr(module, "has_gate", True):
        up = _grouped_linear(rows, module.gate_up_proj, offsets, module.gate_up_proj_bias if has_bias else None, safe, transposed)
        up = module._apply_gate(up)  # (S, I)
    else:
        up = module.act_fn(_grouped_linear(rows, module.up_proj, offsets, module.up_proj_bias if has_bias else None, safe, transposed))
    down = _grouped_linear(up, module.down_proj, offsets, module.down_proj_bias if has_bias else None, safe, transposed)  # (S, H)
    weighted = down * weights.reshape(-1)[perm].unsqueeze(-1)  # (S, H)
    weighted = torch.where((sorted_ids < num_experts).unsqueeze(-1), weighted, 0.0)  # tail rows: undefined
    inverse = torch.empty_like(perm).scatter_(0, perm, _arange(0, t * w, ids.device))  # (S,)
    out = weighted[inverse].view(t, w, -1).float().sum(dim=1)  # (T, H): each token's W rows in float32
    return out.to(hidden.dtype), offsets[-1]


def experts_forward(
    original: Callable,
    module,
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
    router says that every slot is real (see :class:`PairHandoff`). See the module notes.
    """

    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, *args, **kwargs):
        num_tokens, width = top_k_index.shape  # (T, W)
        dense = num_tokens * model_top_k
        if handoff is not None and handoff.take(top_k_index):  # the router vouched: nothing to read
            if not handoff.counted:
                recorder.add_pairs(layer, computed=num_tokens * width, dense=dense)
            return original(hidden_states, top_k_index, top_k_weights, *args, **kwargs)
        backend = getattr(getattr(module, "config", None), "_experts_implementation", None)
        # an accelerate hook (device_map, offloading) loads or moves the weights around the module's
        # own forward: such a module keeps it (the compaction below calls it)
        if backend == "grouped_mm" and not args and not kwargs and getattr(module, "_hf_hook", None) is None:
            out, computed = grouped_pairs(module, hidden_states, top_k_index, top_k_weights, num_experts)
            recorder.add_pairs(layer, computed=computed, dense=dense)
            return out
        real = top_k_index < num_experts  # (T, W) bool
        if compiling():  # capture-safe: every slot computed, the sentinels as a real id at weight 0
            first = top_k_index[:, :1].clamp(max=num_experts - 1)  # (T, 1)
            recorder.add_pairs(layer, computed=num_tokens * width, dense=dense)
            ids = torch.where(real, top_k_index, first)  # (T, W)
            return original(hidden_states, ids, top_k_weights * real, *args, **kwargs)
        token, slot = real.nonzero(as_tuple=True)  # (n,), (n,); host read: the size is data-dependent
        n = token.numel()
        recorder.add_pairs(layer, computed=n, dense=dense)
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

