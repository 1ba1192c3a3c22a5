"""Routing strategies: router logits (T, E) -> chosen experts per token, padded to a fixed width.

Every strategy returns a :class:`RoutingResult`: ``indices`` (T, W) with unused slots set to the
sentinel ``E`` (one past the last expert), ``weights`` (T, W) with 0 in unused slots, and
``counts`` (T,). The experts modules of transformers read the width W from the tensor shape;
the model layer makes every experts backend skip the sentinel.

Weights. ``weight_rule="model"`` follows the model's convention, passed in by the model layer
as ``norm_topk_prob`` (OLMoE: False -> the raw softmax probabilities of the chosen experts;
Mixtral, Qwen3-MoE: True -> renormalised to sum 1). ``"softmax"`` and ``"renormalize"`` force
one or the other. Weights always come from the untempered softmax of the router logits: the
temperature of :class:`BH` changes which experts are chosen, not how they are mixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._kernels import padded_rows
from .._paths import host_fast
from .._validate import check_choice, check_k_bounds, check_logits
from ..bh import _arange

WEIGHT_RULES = ("model", "softmax", "renormalize")



@dataclass(frozen=True)
class RoutingResult:
    """The experts chosen for T tokens out of E, padded to width W."""

    indices: torch.Tensor  # (T, W) int64, expert ids; sentinel E in unused slots
    weights: torch.Tensor  # (T, W) mixing weights, 0 in unused slots
    counts: torch.Tensor  # (T,) int64, experts chosen per token (<= W)
    num_experts: int  # E, which is also the sentinel value

    @property
    def mask(self) -> torch.Tensor:
        """(T, E) bool: True where expert e is chosen for token t."""
        t = self.indices.shape[0]
        m = torch.zeros(t, self.num_experts + 1, dtype=torch.bool, device=self.indices.device)
        return m.scatter(1, self.indices, True)[:, : self.num_experts]


KEY_SORT_MIN = 16_384  # T x E from which the key sort beats torch.topk on the CPU (measured: 256 x 64, 128 x 256)


def router_order(probs: torch.Tensor, width: int) -> torch.Tensor:
    """(T, width) int64: ``torch.topk(probs, width, dim=-1).indices``, the routers' own call.

    On the CPU fast path, for blocks of at least ``KEY_SORT_MIN`` entries, one numpy sort of uint32
    keys per row replaces it (torch.topk takes about 1.2 us a row at E = 64, most of a routing step;
    numpy's SIMD sort of 32-bit keys about a fifth of that): a key is the probability's bits (which
    order like the probabilities, all >= +0) with the lowest ``b = bits(E - 1)`` replaced by the
    expert id. Truncation keeps the order (``trunc(x) < trunc(y)`` implies ``x < y``), so where a
    row's top ``width + 1`` keys have distinct truncated values, its ``width`` largest probabilities
    are strictly ordered and strictly above the rest: every exact top-k returns those ids in that
    order, torch.topk's result. Rows where they do not (a tie, or probabilities closer than
    2**-(23 - b) relative) are given to torch.topk itself; its CPU kernel treats each row alone,
    so a row gets what the whole block would.
    """
    t, n = probs.shape if probs.dim() == 2 else (0, 0)
    if not (host_fast(probs) and probs.dtype == torch.float32 and 0 < width <= n and t * n >= KEY_SORT_MIN):
        return torch.topk(probs, width, dim=-1).indices
    p = probs.detach().numpy()
    shift = max(1, (n - 1).bit_length())
    low = np.uint32((1 << shift) - 1)
    keys = np.bitwise_and(p.view(np.uint32), ~low)  # (T, E): a softmax is >= +0, so its bits order as it does
    keys |= np.arange(n, dtype=np.uint32)
    keys.sort(axis=-1)
    head = keys[:, ::-1][:, : min(width + 1, n)]  # (T, W + 1): the top, descending, and the first one below
    values = head >> shift
    order = (head[:, :width] & low).astype(np.int64)  # (T, W)
    tied = np.flatnonzero((values[:, 1:] == values[:, :-1]).any(axis=1))
    if tied.size:
        order[tied] = torch.topk(torch.from_numpy(p[tied]), width, dim=-1).indices.numpy()
    return torch.from_numpy(order)


def _finish(
    probs: torch.Tensor,
    order: torch.Tensor,
    counts: torch.Tensor,
    width: int,
    *,
    renormalize: bool,
    out_dtype: torch.dtype,
    full: bool = False,
) -> RoutingResult:
    """Take the first ``counts[t]`` experts of ``order[t]`` (ranked best first), pad to ``width``.

    probs: (T, E) float32 softmax; order: (T, >=width) expert ids by preference; counts: (T,).
    ``full``: every count is ``width`` (a fixed-width strategy), so no slot is padded and the
    mask is skipped (multiplying by an all-true mask changes no bit).
    """
    num_experts = probs.shape[-1]
    if (not full and host_fast(probs) and order.dtype == torch.int64 and counts.dtype == torch.int64
            and order.dim() == 2 and order.shape[0] == probs.shape[0] and order.shape[1] >= width and counts.dim() == 1):
        i, w = padded_rows(order.numpy(), probs.detach().numpy(), counts.numpy(), width)  # one compiled row loop
        indices, weights = torch.from_numpy(i), torch.from_numpy(w)
    elif full:
        idx = order[:, :width]  # (T, W)
        indices, weights = idx, probs.gather(1, idx)  # (T, W), (T, W)
    else:
        idx = order[:, :width]  # (T, W)
        used = _arange(0, width, idx.device) < counts.unsqueeze(-1)  # (T, W)
        indices = torch.where(used, idx, num_experts)  # (T, W), sentinel E
        weights = probs.gather(1, idx) * used  # (T, W)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return RoutingResult(indices=indices, weights=weights.to(out_dtype), counts=counts, num_experts=num_experts)


class Strategy:
    """A routing rule. Subclasses implement :meth:`choose` and name their knob.

    ``route(logits, *, layer, model_top_k, norm_topk_prob)`` validates the logits, computes the
    softmax in float32 (as transformers' routers do), calls :meth:`choose` and returns a
    :class:`RoutingResult` whose weights have the logits' dtype.

    A family (a class) is registered once in :mod:`bh_routing.core.families` (its decorator
    :func:`~bh_routing.core.families.register`, the ``bh_routing.strategies`` entry-point group, or
    ``module:Class`` on the command line); the run sweeps, matches and certifies it by its knob.

    Class attributes
    ----------------
    name : str
        The family's name in spec strings, results and reports (``"topp"``).
    knob : str or None
        The constructor parameter that a sweep, a matched comparison and a certificate move
        (``"p"``); it is passed by keyword. Its direction (more or fewer experts as it rises) is
        measured on calibration text, never declared.
    grid : tuple of float
        The knob's default values, swept by ``bh-routing run``.
    label, color : str
        The family in figures and tables.
    references : dict
        Published settings measured beside the sweep: ``{name: constructor keyword arguments}``.
    fixed_width : bool
        Every token gets exactly ``width`` experts (no padding slot), as top-k.
    """

    weight_rule: str = "model"
    name: str = "strategy"
    knob: str | None = None
    grid: tuple = ()
    label: str = ""
    color: str = "#7f7f7f"
    references: dict = {}
    fixed_width: bool = False  # every token gets exactly W experts (no padding slot), e.g. TopK

    def route(
        self,
        logits: torch.Tensor,
        *,
        layer: int | None = None,
        model_top_k: int | None = None,
        norm_topk_prob: bool = False,
    ) -> RoutingResult:
        """Choose experts for router logits of shape (T, E).

        Parameters
        ----------
        logits : torch.Tensor, shape (T, E)
        layer : int, optional
            MoE-layer ordinal (needed by the calibrated null).
        model_top_k : int, optional
            The model's own k; the default ``max_k`` of the variable-k strategies.
        norm_topk_prob : bool, default False
            The model's weight convention, used by ``weight_rule="model"``.
        """
        check_logits(logits)
        return self._route(logits, layer=layer, model_top_k=model_top_k, norm_topk_prob=norm_topk_prob)

    def _route(self, logits, *, layer=None, model_top_k=None, norm_topk_prob=False) -> RoutingResult:
        """:meth:`route` without the logits check (a host read): the patch checks them on the
        device (:meth:`bh_routing.models.Recorder.check_finite`) and says so at the block's end."""
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # (T, E)
        order, counts, width = self.choose(logits, probs, layer=layer, model_top_k=model_top_k)
        renorm = {"model": norm_topk_prob, "softmax": False, "renormalize": True}[self.weight_rule]
        return _finish(probs, order, counts, width, renormalize=renorm, out_dtype=logits.dtype, full=self.fixed_width)

    def choose(self, logits, probs, *, layer, model_top_k):
        """Each token's experts in preference order and how many of them run.

        Parameters
        ----------
        logits : torch.Tensor, shape (T, E)
            The router's logits (validated finite by :meth:`route`).
        probs : torch.Tensor, shape (T, E)
            Their float32 softmax.
        layer : int or None
            The MoE layer's ordinal.
        model_top_k : int or None
            The model's own k.

        Returns
        -------
        order : torch.Tensor, shape (T, >= width), int64
            Expert ids, best first; the first ``counts[t]`` of row t run.
        counts : torch.Tensor, shape (T,), int64
            Experts per token, in [1, width].
        width : int
            The padded width W (a Python int, the same for every call at one layer).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement choose(logits, probs, *, layer, model_top_k)")

    def describe(self) -> dict:
        """JSON-able parameters."""
        params = {k: v for k, v in vars(self).items() if k != "calibration" and not k.startswith("_")}
        return {"name": self.name, **params}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({params})"


def _check_weight_rule(rule: str) -> str:
    return check_choice(rule, WEIGHT_RULES, name="weight_rule")


def _resolve_max_k(max_k: int | None, model_top_k: int | None, num_experts: int, min_k: int) -> int:
    k = max_k if max_k is not None else (model_top_k if model_top_k is not None else num_experts)
    check_k_bounds(min_k, k, num_experts)
    return k

